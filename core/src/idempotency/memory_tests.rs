//! The in-memory store: its lease state machine, expiry, capacity and
//! concurrent claims.

use super::*;

const LEASE: Duration = Duration::from_secs(10);

/// The fence of an acquired claim; panics otherwise.
fn got(claim: Claim, failed: u32, crashed: bool) -> Fence {
    match claim {
        Claim::Acquired {
            fence,
            failed_runs,
            crashed: c,
        } if failed_runs == failed && c == crashed => fence,
        other => panic!("expected Acquired({failed}, crashed {crashed}), got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn lease_state_machine() {
    let s = MemoryStore::default();
    let k = Key::new("k");
    let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
    assert!(matches!(
        s.claim(&k, "b", LEASE, 0).await.unwrap(),
        Claim::Busy { .. }
    ));
    s.release(&k, a, Some(2)).await.unwrap();
    let b = got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 2, false);
    assert!(b > a, "fences grow");
    assert!(!s.complete(&k, a).await.unwrap(), "a gave the lease up");
    assert!(s.complete(&k, b).await.unwrap());
    assert_eq!(s.claim(&k, "c", LEASE, 0).await.unwrap(), Claim::Completed);
    assert_eq!(s.claim(&k, "c", LEASE, 1).await.unwrap(), Claim::Completed);
}

#[tokio::test(start_paused = true)]
async fn expired_lease_is_taken_over_as_a_crash_and_late_owner_refused() {
    let s = MemoryStore::default();
    let k = Key::new("k");
    let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
    tokio::time::advance(LEASE / 2).await;
    assert!(s.renew(&k, a, LEASE).await.unwrap());
    tokio::time::advance(LEASE * 3 / 4).await;
    assert!(
        matches!(
            s.claim(&k, "b", LEASE, 0).await.unwrap(),
            Claim::Busy { .. }
        ),
        "renewed lease holds"
    );
    tokio::time::advance(LEASE).await;
    let b = got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 1, true);
    assert!(!s.complete(&k, a).await.unwrap(), "late owner refused");
    assert!(!s.renew(&k, a, LEASE).await.unwrap());
    assert!(s.complete(&k, b).await.unwrap());
}

#[test]
fn answers_at_once_what_the_async_calls_answer() {
    // `claim_now` / `complete_now` are what the idempotency layer calls
    // first: the same state machine, with no future.
    let s = MemoryStore::default();
    let k = Key::new("k");
    let now = |c: Option<Result<Claim, StoreError>>| c.expect("answered at once").unwrap();
    let a = got(now(s.claim_now(&k, "a", LEASE, 0)), 0, false);
    assert!(matches!(
        now(s.claim_now(&k, "b", LEASE, 0)),
        Claim::Busy { .. }
    ));
    assert!(
        !s.complete_now(&k, Fence(a.0 + 1)).unwrap().unwrap(),
        "not the holder's fence"
    );
    assert!(s.complete_now(&k, a).unwrap().unwrap());
    assert!(matches!(
        now(s.claim_now(&k, "c", LEASE, 0)),
        Claim::Completed
    ));
    let other = Key::new("other");
    let b = got(now(s.claim_now(&other, "a", LEASE, 0)), 0, false);
    assert!(b > a, "fences grow across keys");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(
        rt.block_on(s.complete(&other, b)).unwrap(),
        "the async call sees the same lease"
    );
    assert!(matches!(
        rt.block_on(s.claim(&other, "c", LEASE, 0)).unwrap(),
        Claim::Completed
    ));
}

#[tokio::test(start_paused = true)]
async fn dead_lettered_key_admits_only_the_next_replay_once() {
    let s = MemoryStore::default();
    let k = Key::new("k");
    let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
    s.release(&k, a, Some(4)).await.unwrap();
    let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 4, false);
    assert!(s.mark_dead_lettered(&k, a).await.unwrap());
    assert_eq!(
        s.claim(&k, "b", LEASE, 0).await.unwrap(),
        Claim::DeadLettered
    );
    assert_eq!(
        s.claim(&k, "b", LEASE, 7).await.unwrap(),
        Claim::DeadLettered,
        "a forged, larger replay number is not a redrive of this letter"
    );
    let b = got(s.claim(&k, "b", LEASE, 1).await.unwrap(), 0, false);
    assert!(s.mark_dead_lettered(&k, b).await.unwrap());
    assert_eq!(
        s.claim(&k, "c", LEASE, 1).await.unwrap(),
        Claim::DeadLettered,
        "once per replay"
    );
    got(s.claim(&k, "c", LEASE, 2).await.unwrap(), 0, false);
}

#[tokio::test(start_paused = true)]
async fn finished_keys_expire_after_ttl() {
    let s = MemoryStore::new(10, Duration::from_secs(60));
    let k = Key::new("k");
    let a = got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false);
    s.complete(&k, a).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    got(s.claim(&k, "b", LEASE, 0).await.unwrap(), 0, false);
}

#[tokio::test(start_paused = true)]
async fn capacity_evicts_finished_keys_and_refuses_when_all_are_live() {
    let s = MemoryStore::new(2, Duration::from_secs(3600));
    let mut fences = Vec::new();
    for i in 0..2 {
        let k = Key::new(&format!("k{i}"));
        fences.push(got(s.claim(&k, "a", LEASE, 0).await.unwrap(), 0, false));
    }
    assert!(matches!(
        s.claim(&Key::new("k2"), "a", LEASE, 0).await,
        Err(StoreError::Full { capacity: 2 })
    ));
    s.complete(&Key::new("k0"), fences[0]).await.unwrap();
    assert!(s.claim(&Key::new("k2"), "a", LEASE, 0).await.is_ok());
    assert_eq!(s.len(), 2);
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let s = std::sync::Arc::new(MemoryStore::default());
    let k = Key::new("race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (s, k) = (s.clone(), k.clone());
        tasks.spawn(async move { s.claim(&k, &format!("o{i}"), LEASE, 0).await });
    }
    let mut winners = 0;
    while let Some(r) = tasks.join_next().await {
        if matches!(r.unwrap().unwrap(), Claim::Acquired { .. }) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}
