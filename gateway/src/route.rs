//! Routing: the longest matching `path_prefix` wins (SPEC §7).

use crate::config::model::Route;

/// Finds the route for `path` among `routes`, which the config keeps sorted longest prefix
/// first, so the first match is the longest. Returns its index.
pub fn find(routes: &[Route], path: &str) -> Option<usize> {
    routes
        .iter()
        .position(|r| path.starts_with(r.path_prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(prefix: &str) -> Route {
        Route {
            path_prefix: prefix.to_string(),
            upstream: "u".to_string(),
            timeout: Duration::from_secs(1),
            limit_req: Vec::new(),
            limit_conn: Vec::new(),
        }
    }

    #[test]
    fn longest_prefix_wins_when_sorted() {
        let routes = vec![route("/api/reservations"), route("/api/"), route("/")];
        assert_eq!(find(&routes, "/api/reservations/1"), Some(0));
        assert_eq!(find(&routes, "/api/events"), Some(1));
        assert_eq!(find(&routes, "/other"), Some(2));
        assert_eq!(find(&routes[..2], "/other"), None);
    }
}
