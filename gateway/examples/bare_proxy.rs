//! The smallest Pingora 0.9 HTTP proxy: one `ProxyHttp` with only `upstream_peer`, which sends
//! every request to one plain-HTTP upstream; everything else is Pingora's default.
//!
//! It exists as the baseline for the gateway's overhead. `scripts/bench-gateway-vs-nginx.sh
//! --targets "nginx bare gateway"` runs it next to NGINX and the gateway in front of the same
//! upstream, so that "gateway / bare" is what the gateway's own work costs (limits, bulkheads,
//! health, headers, access log, metrics) and "bare / nginx" is what Pingora itself costs.
//!
//! Same crates as the gateway binary: `pingora` 0.9 with the workspace's features, and jemalloc
//! as the global allocator (the gateway uses it too, so the allocator is not part of the
//! difference). No filters, no logging, no limits, no added headers.
//!
//! ```sh
//! cargo build --release -p gateway --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:6188 --upstream 127.0.0.1:8000 \
//!     --threads 2 [--no-work-stealing] [--keepalive-pool 128]
//! ```
//!
//! Every option can also come from the environment: `BARE_LISTEN`, `BARE_UPSTREAM`,
//! `BARE_THREADS`, `BARE_NO_WORK_STEALING=true`, `BARE_KEEPALIVE_POOL`. SIGTERM or SIGINT stops
//! it within about a second (no grace period).

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command line (or environment) of the bare proxy.
#[derive(Debug, Parser)]
#[command(
    name = "bare_proxy",
    about = "Smallest Pingora proxy: every request to one upstream (benchmark baseline)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BARE_LISTEN", default_value = "127.0.0.1:6188")]
    listen: SocketAddr,
    /// The one upstream (plain HTTP/1.1), as IP:PORT.
    #[arg(long, env = "BARE_UPSTREAM")]
    upstream: SocketAddr,
    /// Pingora worker threads (`ServerConf::threads`).
    #[arg(long, env = "BARE_THREADS", default_value_t = 2)]
    threads: usize,
    /// Pingora's `work_stealing: false`: one single-threaded runtime per thread.
    #[arg(long, env = "BARE_NO_WORK_STEALING")]
    no_work_stealing: bool,
    /// Idle upstream connections kept (`ServerConf::upstream_keepalive_pool_size`).
    #[arg(long, env = "BARE_KEEPALIVE_POOL", default_value_t = 128)]
    keepalive_pool: usize,
}

/// The proxy: no per-request context, one peer for every request.
struct BareProxy {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.threads == 0 {
        eprintln!("bare_proxy: --threads must be at least 1");
        return ExitCode::from(2);
    }
    // Pingora binds when the service starts and panics on failure; check here for a clean error.
    if let Err(e) = std::net::TcpListener::bind(args.listen) {
        eprintln!("bare_proxy: cannot listen on {}: {e}", args.listen);
        return ExitCode::FAILURE;
    }

    let conf = ServerConf {
        threads: args.threads,
        work_stealing: !args.no_work_stealing,
        upstream_keepalive_pool_size: args.keepalive_pool,
        // Stop at once on SIGTERM (the default waits up to 5 minutes for the grace period).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();

    let proxy = BareProxy {
        peer: HttpPeer::new(args.upstream, false, String::new()),
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);

    eprintln!(
        "bare_proxy: listening on {}, upstream {}, threads {}, work_stealing {}, keepalive pool {}",
        args.listen, args.upstream, args.threads, !args.no_work_stealing, args.keepalive_pool
    );
    server.run_forever()
}
