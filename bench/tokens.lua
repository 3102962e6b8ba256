-- wrk script: every request carries the next token from $BENCH_TOKENS (one per line), so no
-- two requests in a row share a token (the claims-cache-miss path).
local tokens = {}
local i = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  -- Each wrk thread starts at a different offset.
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
