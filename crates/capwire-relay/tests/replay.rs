//! The attach contract over a real loopback WebSocket, with the SDK-based
//! test agent as a child process: welcome, then the gap, then live frames;
//! no duplicate and no hole across a reconnect; a reset when the gap fell
//! out of the ring; sessions that do not cross-talk; a client that never
//! reads.

mod common;

use common::*;
use serde_json::json;

/// One client drives, another watches, drops in the middle of a turn and
/// comes back with its last sequence number: it gets exactly what it missed.
#[tokio::test]
async fn a_client_that_drops_and_resumes_gets_exactly_the_gap() {
    let Some(config) = config() else { return };
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    let w = a.attach(json!({"clientId": "laptop"})).await;
    assert_eq!(w["sessionId"], json!(null));
    a.initialize().await;
    let sid = a.new_session().await;

    let mut b = Client::connect(&relay).await;
    let w = b
        .attach(json!({"clientId": "phone", "sessionId": sid}))
        .await;
    assert_eq!(w["reset"], false);
    assert_eq!(w["busy"], false);
    let epoch = w["epoch"].as_str().unwrap().to_owned();

    let prompt = a
        .start_request("session/prompt", Client::prompt_params(&sid, "slow 30 10"))
        .await;
    // B sees the typed prompt, then some chunks, then vanishes.
    b.until(|v| v["params"]["update"]["sessionUpdate"] == "user_message_chunk")
        .await;
    b.until(|v| chunk_text(v) == Some("slow 5")).await;
    let first = b.seqs();
    let last_seq = *first.last().unwrap();
    let seen_before = b.chunks();
    drop(b);

    let done = a.until(|v| v["id"] == prompt).await;
    assert_eq!(done["result"]["stopReason"], "end_turn");

    let mut b = Client::connect(&relay).await;
    let w = b
        .attach(json!({"clientId": "phone", "sessionId": sid, "lastSeq": last_seq, "epoch": epoch}))
        .await;
    assert_eq!(w["reset"], false, "{w}");
    assert_eq!(w["busy"], false);
    let head = w["headSeq"].as_u64().unwrap();
    assert!(head > last_seq);
    // The gap, in order, up to the head.
    b.until(|v| v["_seq"].as_u64() == Some(head)).await;
    let gap = b.seqs();
    assert_eq!(
        gap.first(),
        Some(&(last_seq + 1)),
        "the gap starts after lastSeq"
    );
    assert_eq!(gap.last(), Some(&head));
    let all: Vec<u64> = first.iter().chain(gap.iter()).copied().collect();
    assert_consecutive(&all);
    let mut chunks = seen_before;
    chunks.extend(b.chunks());
    let want: Vec<String> = (0..30).map(|i| format!("slow {i}")).collect();
    assert_eq!(chunks, want, "every chunk exactly once");
    // The welcome came before any ring frame.
    let welcome_at = b
        .log
        .iter()
        .position(|v| v["result"]["headSeq"].is_u64())
        .unwrap();
    let first_ring = b.log.iter().position(|v| v["_seq"].is_u64()).unwrap();
    assert!(welcome_at < first_ring);
    // The end of the turn is in the ring for watchers.
    assert!(b
        .log
        .iter()
        .any(|v| v["method"] == "_relay/turn" && v["params"]["busy"] == false));

    // Attaching again at the head: nothing is replayed, live frames follow.
    let mut c = Client::connect(&relay).await;
    let w = c
        .attach(json!({"sessionId": sid, "lastSeq": head, "epoch": epoch}))
        .await;
    assert_eq!(
        (w["reset"].clone(), w["headSeq"].as_u64()),
        (json!(false), Some(head))
    );
    a.request("session/prompt", Client::prompt_params(&sid, "hello"))
        .await;
    let v = c.until(|v| chunk_text(v).is_some()).await;
    assert_eq!(chunk_text(&v), Some("echo: hello"));
    assert_consecutive(&c.seqs());
    assert_eq!(c.seqs().first(), Some(&(head + 1)));
    relay.shutdown().await;
}

/// A gap that fell out of the ring is an explicit reset, followed by what
/// the ring still holds — never a silent jump. Another epoch is a reset too.
#[tokio::test]
async fn a_gap_that_fell_out_of_the_ring_is_a_reset() {
    let Some(mut config) = config() else { return };
    config.ring_frames = 16;
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.initialize().await;
    let sid = a.new_session().await;
    a.request("session/prompt", Client::prompt_params(&sid, "stream 50"))
        .await;

    let mut b = Client::connect(&relay).await;
    let w = b.attach(json!({"sessionId": sid, "lastSeq": 3})).await;
    assert_eq!(w["reset"], true, "{w}");
    let (first, head) = (
        w["firstSeq"].as_u64().unwrap(),
        w["headSeq"].as_u64().unwrap(),
    );
    assert_eq!(head - first + 1, 16);
    b.until(|v| v["_seq"].as_u64() == Some(head)).await;
    let seqs = b.seqs();
    assert_eq!(seqs.first(), Some(&first));
    assert_consecutive(&seqs);

    let epoch = w["epoch"].as_str().unwrap().to_owned();
    let mut c = Client::connect(&relay).await;
    let w = c
        .attach(json!({"sessionId": sid, "lastSeq": head - 1, "epoch": format!("{epoch}x")}))
        .await;
    assert_eq!(w["reset"], true, "a foreign epoch resets");
    let w = Client::connect(&relay)
        .await
        .attach(json!({"sessionId": sid, "lastSeq": head - 1, "epoch": epoch}))
        .await;
    assert_eq!(w["reset"], false);
    // An unknown session is an error, not an empty view.
    let mut d = Client::connect(&relay).await;
    let r = d
        .request("_relay/attach", json!({"sessionId": "nope"}))
        .await;
    assert_eq!(r["error"]["code"], -32002);
    relay.shutdown().await;
}

/// Two sessions on one agent: each client sees only its own session's
/// updates; switching the view replays only that session.
#[tokio::test]
async fn two_sessions_do_not_cross_talk() {
    let Some(config) = config() else { return };
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.initialize().await;
    let s1 = a.new_session().await;
    let mut b = Client::connect(&relay).await;
    let s2 = b.new_session().await;
    assert_ne!(s1, s2);
    let pa = a
        .start_request("session/prompt", Client::prompt_params(&s1, "stream 40"))
        .await;
    let pb = b
        .start_request("session/prompt", Client::prompt_params(&s2, "stream 25"))
        .await;
    a.until(|v| v["id"] == pa).await;
    b.until(|v| v["id"] == pb).await;
    for (client, sid, n) in [(&a, &s1, 40), (&b, &s2, 25)] {
        let updates: Vec<_> = client
            .log
            .iter()
            .filter(|v| v["method"] == "session/update")
            .collect();
        assert!(updates
            .iter()
            .all(|v| v["params"]["sessionId"] == json!(sid)));
        assert_eq!(client.chunks().len(), n);
        assert_consecutive(&client.seqs());
    }
    let list = a.request("_relay/list_sessions", json!({})).await;
    assert_eq!(list["result"]["sessions"].as_array().unwrap().len(), 2);

    // A switches to s2 (session/load of a live session replays its ring).
    let before = a.log.len();
    let r = a
        .request(
            "session/load",
            json!({"sessionId": s2, "cwd": "/tmp", "mcpServers": []}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let switched = &a.log[before..];
    assert!(switched
        .iter()
        .any(|v| v["method"] == "_relay/welcome" && v["params"]["sessionId"] == json!(s2)));
    let chunks: Vec<_> = switched.iter().filter_map(chunk_text).collect();
    assert_eq!(chunks.len(), 25, "only s2's frames are replayed");
    relay.shutdown().await;
}

/// A client that never reads holds back only itself: the others get every
/// frame at full speed and the relay's memory stays bounded. When the stuck
/// client reads again it finds no silent skip: consecutive frames, an
/// explicit `_relay/reset` where the ring left it behind, then consecutive
/// frames from the point the reset names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_only_its_share() {
    let Some(mut config) = config() else { return };
    config.ring_frames = 512;
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.initialize().await;
    let sid = a.new_session().await;
    let mut stuck = Client::connect(&relay).await;
    stuck.attach(json!({"sessionId": sid})).await;
    let mut fast = Client::connect(&relay).await;
    fast.attach(json!({"sessionId": sid})).await;

    let rss_before = rss_kib();
    let n = 12000usize;
    let t = std::time::Instant::now();
    let p = a
        .start_request(
            "session/prompt",
            Client::prompt_params(&sid, &format!("stream {n} 4096")),
        )
        .await;
    // The fast client counts as it goes (keeping 48 MiB of frames would
    // hide the relay's own memory in this process's).
    let (mut chunks, mut last) = (0usize, 0u64);
    let last_text = format!("chunk {}.", n - 1);
    loop {
        let v = fast.next_frame().await.expect("fast client open");
        assert_ne!(
            v["method"], "_relay/reset",
            "the reading client was never behind"
        );
        if let Some(seq) = v["_seq"].as_u64() {
            assert!(
                last == 0 || seq == last + 1,
                "hole or duplicate: {last} then {seq}"
            );
            last = seq;
        }
        let done = chunk_text(&v).is_some_and(|t| t.starts_with(&last_text));
        chunks += usize::from(chunk_text(&v).is_some());
        fast.log.clear();
        if done {
            break;
        }
    }
    let took = t.elapsed();
    assert_eq!(chunks, n);
    let final_seq = last;
    a.until(|v| v["id"] == p).await;
    let rss_after = rss_kib();
    // 48 MiB went through; the ring holds about 2 MiB, the stuck client's
    // queue 64 frames (256 KiB). Unbounded buffering would show 40+ MiB;
    // the allocator's own slack is most of what is allowed here.
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        eprintln!("rss {before} KiB -> {after} KiB; {n} frames in {took:?}");
        assert!(
            after.saturating_sub(before) < 24 * 1024,
            "memory grew by {} KiB",
            after.saturating_sub(before)
        );
    }
    assert!(
        took < std::time::Duration::from_secs(30),
        "the reading client was slowed: {took:?}"
    );
    // The stuck client reads at last.
    let (mut got, mut resets, mut prev): (usize, usize, Option<u64>) = (0, 0, None);
    let mut expect_from: Option<u64> = None;
    loop {
        let v = stuck
            .next_frame()
            .await
            .expect("the stuck client is still served");
        if v["method"] == "_relay/reset" {
            resets += 1;
            expect_from = v["params"]["fromSeq"].as_u64();
            assert!(v["params"]["missed"].as_u64() > Some(0), "{v}");
        } else if let Some(seq) = v["_seq"].as_u64() {
            match expect_from.take() {
                Some(from) => assert_eq!(seq, from, "after a reset, frames resume where it says"),
                None => assert!(
                    prev.map_or(true, |p| seq == p + 1),
                    "hole or duplicate: {prev:?} then {seq}"
                ),
            }
            prev = Some(seq);
            got += 1;
            if seq == final_seq {
                break;
            }
        }
        stuck.log.clear();
    }
    assert!(resets >= 1, "the stuck client was told it was reset");
    assert!(got < n, "the stuck client did not get every frame ({got})");
    relay.shutdown().await;
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
