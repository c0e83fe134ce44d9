//! The broker over real HTTP: publishes reach long-polling subscribers.

use std::time::Duration;

use broker::client::BrokerClient;
use broker::SafekeeperTimelineInfo;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

async fn start_broker() -> BrokerClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker::server::serve(listener, std::future::pending()));
    BrokerClient::new(&addr.to_string())
}

fn info(sk: u64, tenant_id: TenantId, timeline_id: TimelineId, flush: u64) -> SafekeeperTimelineInfo {
    SafekeeperTimelineInfo {
        safekeeper_id: sk,
        tenant_id,
        timeline_id,
        term: 1,
        flush_lsn: Lsn(flush),
        commit_lsn: Lsn(0),
        remote_consistent_lsn: Lsn(0),
        pg_addr: format!("127.0.0.1:{}", 5000 + sk),
        http_addr: String::new(),
        backup_lsn: None,
    }
}

#[tokio::test]
async fn publishes_are_seen_per_timeline_and_replace_older_ones() {
    let client = start_broker().await;
    let (tenant, tl_a, tl_b) = (TenantId::generate(), TimelineId::generate(), TimelineId::generate());
    client.publish(&info(1, tenant, tl_a, 100)).await.unwrap();
    client.publish(&info(2, tenant, tl_a, 200)).await.unwrap();
    client.publish(&info(1, tenant, tl_a, 300)).await.unwrap();
    client.publish(&info(3, tenant, tl_b, 999)).await.unwrap();
    let view = client.poll(tenant, tl_a, None, Duration::from_secs(1)).await.unwrap();
    let flushes: Vec<(u64, u64)> = view.safekeepers.iter().map(|p| (p.info.safekeeper_id, p.info.flush_lsn.0)).collect();
    assert_eq!(flushes, vec![(1, 300), (2, 200)]);
    assert_eq!(view.version, 3);
}

#[tokio::test]
async fn long_poll_wakes_on_publish_and_times_out_without() {
    let client = start_broker().await;
    let (tenant, tl) = (TenantId::generate(), TimelineId::generate());
    client.publish(&info(1, tenant, tl, 100)).await.unwrap();
    // Nothing newer than version 1: the poll ends at its timeout with version 1.
    let view = client.poll(tenant, tl, Some(1), Duration::from_millis(200)).await.unwrap();
    assert_eq!(view.version, 1);
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.poll(tenant, tl, Some(1), Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.publish(&info(2, tenant, tl, 500)).await.unwrap();
    let view = waiter.await.unwrap().unwrap();
    assert_eq!(view.version, 2);
    assert!(view.safekeepers.iter().any(|p| p.info.safekeeper_id == 2 && p.info.flush_lsn == Lsn(500)));
}
