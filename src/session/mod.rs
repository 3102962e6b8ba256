//! Browser sessions: the token in a cookie (`cookie`), and what a browser needs around it
//! (`browser`: navigations, a safe `next`, same-origin checks).

pub mod browser;
pub mod cookie;

pub use browser::{NextPolicy, encode_component, is_navigation, safe_next, same_origin};
pub use cookie::{
    CookieSettings, DuplicateCookie, session_cookie, strip_session_cookie, valid_cookie_name,
};
