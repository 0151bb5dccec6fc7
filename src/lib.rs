//! graphgate: a reverse proxy for Meta's Graph API.
pub mod sim;
