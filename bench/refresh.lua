-- wrk script: POST /auth/refresh with refresh tokens that are not spent yet. It starts from
-- the tokens in $BENCH_REFRESH (one per line, more than there are connections) and queues the
-- successor each answer carries, so every request rotates a live token.
local queue, head, tail = {}, 1, 0

function init(args)
  for line in io.lines(os.getenv("BENCH_REFRESH")) do
    if #line > 0 then
      tail = tail + 1
      queue[tail] = line
    end
  end
end

function request()
  local token = "exhausted"
  if head <= tail then
    token = queue[head]
    queue[head] = nil
    head = head + 1
  end
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" },
    '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
  local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if token then
    tail = tail + 1
    queue[tail] = token
  end
end
