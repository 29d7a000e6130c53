//! Request limits: NGINX-exact `limit_req` and `limit_conn` (being written).
