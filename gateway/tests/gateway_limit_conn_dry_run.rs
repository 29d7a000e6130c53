//! `limit_conn` with `dry_run: true` counts concurrency like an enforcing zone, reports the
//! requests it would have rejected, and never rejects (NGINX's `limit_conn_dry_run`).

mod common;

use std::time::Duration;

use common::{client, GatewayProcess, TestUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_limit_conn_counts_but_never_rejects() {
    let up = TestUpstream::start("slow").await;
    up.set_delay(Duration::from_millis(1200));
    let gw = GatewayProcess::start(&format!(
        "server: {{ threads: 2 }}
limit_conn_zones:
  conn_per_ip: {{ key: client_ip }}
upstreams:
  u: {{ servers: [\"{}\"] }}
routes:
  - path_prefix: /
    upstream: u
    limit_conn: [{{ zone: conn_per_ip, max: 1, dry_run: true }}]
",
        up.addr
    ))
    .await;
    let c = client();
    let requests: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            let url = gw.url(&format!("/slow/{i}"));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.expect("task").expect("request"));
    }
    assert_eq!(statuses, vec![200, 200, 200], "a dry run never rejects");
    assert_eq!(
        up.max_inflight(),
        3,
        "all three reached the upstream together"
    );
    // Only the first held a slot; the other two would have been rejected.
    assert_eq!(
        gw.wait_metric(
            "gateway_limit_conn_dry_run_total{zone=\"conn_per_ip\"}",
            2.0
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        gw.metric("gateway_limit_conn_rejected_total{zone=\"conn_per_ip\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}
