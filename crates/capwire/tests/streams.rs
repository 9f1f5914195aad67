//! Streams with credit-based backpressure, server → client and client →
//! server (sinks), over every transport.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::proto::{Codec, Frame, Payload, StreamItem};
use capwire::{
    sink, Capability, Code, Event, Methods, Reason, Registry, SessionConfig, SinkWriter, Status,
    StreamOptions, Value,
};
use common::*;
use futures_util::{stream, StreamExt};

/// Counts what a producer was asked for, and notices when it is dropped.
#[derive(Clone, Default)]
struct Producer {
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

struct DropFlag(Arc<AtomicU64>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `forever()`: 0, 1, 2, … until cancelled; `slow(ms)`: one item per `ms`;
/// `failing()`: two items, then `data_loss`-like `aborted`; `counters(n)`:
/// n capabilities; `upload()`: a sink whose items land in `received`;
/// `uppercase(out)`: a sink whose strings go to `out` in upper case.
fn streaming(
    p: &Producer,
    received: Arc<Mutex<Vec<u64>>>,
    ended: Arc<tokio::sync::Notify>,
) -> Methods {
    let forever = p.clone();
    Methods::new("Streaming")
        .stream("forever", move |_args, _ctx| {
            let p = forever.clone();
            async move {
                let flag = DropFlag(p.dropped.clone());
                Ok(stream::iter(0u64..).map(move |i| {
                    let _keep = &flag;
                    p.produced.fetch_add(1, Ordering::SeqCst);
                    Value::new(&i)
                }))
            }
        })
        .stream("slow", |args: Value, _ctx| async move {
            let (ms,): (u64,) = args.decode()?;
            Ok(stream::iter(0u64..).then(move |i| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Value::new(&i)
            }))
        })
        .stream("failing", |_args, _ctx| async move {
            Ok(stream::iter(vec![
                Value::new(&1),
                Value::new(&2),
                Err(Status::new(Code::Aborted, "the source broke")),
                Value::new(&3),
            ]))
        })
        .stream("counters", |args: Value, ctx| async move {
            let (n,): (i64,) = args.decode()?;
            let caps: Vec<Result<Value, Status>> = (0..n)
                .map(|i| Ok(Value::capability(ctx.export(counter(i * 10)))))
                .collect();
            Ok(stream::iter(caps))
        })
        .method("upload", move |_args, _ctx| {
            let received = received.clone();
            let ended = ended.clone();
            async move {
                let (cap, mut items) = sink(32);
                tokio::spawn(async move {
                    while let Some(Ok(v)) = items.next().await {
                        received.lock().unwrap().push(v.decode().unwrap());
                    }
                    ended.notify_one();
                });
                Ok(Value::capability(cap))
            }
        })
        .method("uppercase", |args: Value, _ctx| async move {
            let out = args.cap(0)?;
            let (input, mut items) = sink(8);
            tokio::spawn(async move {
                let mut writer = SinkWriter::new(out);
                while let Some(Ok(v)) = items.next().await {
                    let s: String = v.decode().unwrap();
                    if writer
                        .send(Value::new(&s.to_uppercase()).unwrap())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = writer.end().await;
            });
            Ok(Value::capability(input))
        })
}

struct Fixture {
    registry: Registry,
    _handles: Vec<capwire::ServeHandle>,
    producer: Producer,
    received: Arc<Mutex<Vec<u64>>>,
    ended: Arc<tokio::sync::Notify>,
}

fn fixture() -> Fixture {
    let producer = Producer::default();
    let received = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(tokio::sync::Notify::new());
    let registry = Registry::new();
    let h1 = registry
        .serve(
            "streaming",
            "1",
            streaming(&producer, received.clone(), ended.clone()),
        )
        .unwrap();
    let h2 = registry.serve("demo", "1.0", demo()).unwrap();
    Fixture {
        registry,
        _handles: vec![h1, h2],
        producer,
        received,
        ended,
    }
}

async fn collect(items: capwire::ItemStream) -> Vec<Result<Value, Status>> {
    within(
        Duration::from_secs(20),
        "the stream",
        items.collect::<Vec<_>>(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_every_transport_and_codec() {
    for kind in ALL {
        for codec in [Codec::Msgpack, Codec::Json] {
            let f = fixture();
            let config = SessionConfig::default().codec(codec);
            let p = pair_with(kind, f.registry.clone(), config.clone(), config).await;
            let demo = p.client.bootstrap("demo", None).await.unwrap();
            let items = collect(demo.call_stream("count", Value::new(&(100,)).unwrap())).await;
            let got: Vec<u64> = items
                .into_iter()
                .map(|r| r.unwrap().decode().unwrap())
                .collect();
            assert_eq!(got, (0..100).collect::<Vec<_>>(), "{kind:?}/{codec}");
            eventually("the stream answer is gone", || {
                p.server.stats().answers == 0
            })
            .await;
            assert_eq!(p.server.stats().stream_items_out, 100);
            assert_eq!(p.client.stats().stream_items_in, 100);
        }
    }
}

/// The test: 1 000 000 small items through one stream with a window
/// of 32, and the sender never had more than 32 unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_items_never_exceed_the_window() {
    let f = fixture();
    let p = pair(Kind::Unix, f.registry.clone()).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    let mut items = demo.call_stream_with(
        "count",
        Value::new(&(1_000_000,)).unwrap(),
        StreamOptions::default().window(32),
    );
    let mut next = 0u64;
    let mut most_buffered = 0;
    while let Some(item) = within(Duration::from_secs(60), "an item", items.next()).await {
        let n: u64 = item.unwrap().decode().unwrap();
        assert_eq!(n, next);
        next += 1;
        most_buffered = most_buffered.max(items.buffered_items());
    }
    assert_eq!(next, 1_000_000);
    let stats = p.server.stats();
    assert_eq!(stats.stream_items_out, 1_000_000);
    assert!(
        stats.stream_max_unacked <= 32,
        "sender had {} unacknowledged",
        stats.stream_max_unacked
    );
    assert!(stats.stream_max_unacked > 0);
    assert!(most_buffered <= 32, "receiver buffered {most_buffered}");
}

/// Two streams on one connection: one consumer stops reading, the other
/// still gets everything; the stalled one's producer is held at the window
/// and its memory stays bounded for as long as it stays stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_slows_only_its_own_stream() {
    for kind in [Kind::Tcp, Kind::Ws] {
        let f = fixture();
        let p = pair(kind, f.registry.clone()).await;
        let s = p.client.bootstrap("streaming", None).await.unwrap();
        let demo = p.client.bootstrap("demo", None).await.unwrap();

        let mut stalled = s.call_stream("forever", Value::null());
        for i in 0..5u64 {
            let v: u64 = stalled.next().await.unwrap().unwrap().decode().unwrap();
            assert_eq!(v, i);
        }
        // The other stream runs to its end while the first is not read.
        let other = collect(demo.call_stream("count", Value::new(&(20_000,)).unwrap())).await;
        assert_eq!(other.len(), 20_000, "{kind:?}");
        assert!(other.iter().all(Result::is_ok));

        tokio::time::sleep(Duration::from_millis(200)).await;
        let produced = f.producer.produced.load(Ordering::SeqCst);
        assert!(
            produced <= 32,
            "{kind:?}: the stalled producer made {produced} items for a window of 32"
        );
        assert!(
            stalled.buffered_items() <= 32,
            "{kind:?}: {} buffered",
            stalled.buffered_items()
        );
        assert!(p.server.stats().stream_max_unacked <= 32);

        // Reading again resumes it.
        for i in 5..100u64 {
            let v: u64 = stalled.next().await.unwrap().unwrap().decode().unwrap();
            assert_eq!(v, i);
        }
    }
}

/// Dropping the stream mid-way cancels it: the producer is dropped, the
/// answer ends as cancelled.
#[tokio::test]
async fn a_stream_dropped_mid_way_stops_the_producer() {
    for kind in ALL {
        let f = fixture();
        let p = pair(kind, f.registry.clone()).await;
        let mut events = p.server.events();
        let s = p.client.bootstrap("streaming", None).await.unwrap();
        let mut items = s.call_stream("forever", Value::null());
        for _ in 0..3 {
            items.next().await.unwrap().unwrap();
        }
        drop(items);
        eventually("the producer is dropped", || {
            f.producer.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
        eventually("the answer is gone", || p.server.stats().answers == 0).await;
        loop {
            match within(Duration::from_secs(5), "the stream event", events.recv())
                .await
                .unwrap()
            {
                Event::Stream {
                    outcome, method, ..
                } => {
                    assert_eq!(method, "forever");
                    assert_eq!(outcome, Code::Cancelled, "{kind:?}");
                    break;
                }
                _ => continue,
            }
        }
        eventually("the client forgot the stream", || {
            p.client.stats().questions == 0
        })
        .await;
    }
}

#[tokio::test]
async fn items_carry_capabilities() {
    let f = fixture();
    let p = pair(Kind::Tcp, f.registry.clone()).await;
    let s = p.client.bootstrap("streaming", None).await.unwrap();
    let items = collect(s.call_stream("counters", Value::new(&(3,)).unwrap())).await;
    assert_eq!(items.len(), 3);
    for (i, item) in items.into_iter().enumerate() {
        let counter = item.unwrap().cap(0).unwrap();
        let n: i64 = counter
            .call("increment", Value::new(&(1,)).unwrap())
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(n, i as i64 * 10 + 1);
    }
    eventually("the counters are released", || {
        p.server.stats().exports == 1
    })
    .await;
}

#[tokio::test]
async fn a_stream_error_ends_the_stream() {
    let f = fixture();
    let p = pair(Kind::Mem, f.registry.clone()).await;
    let s = p.client.bootstrap("streaming", None).await.unwrap();
    let items = collect(s.call_stream("failing", Value::null())).await;
    assert_eq!(items.len(), 3, "two items, then the error, then nothing");
    assert!(items[0].is_ok() && items[1].is_ok());
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.code, Code::Aborted);
    assert_eq!(err.message, "the source broke");
}

/// The deadline covers the whole stream: the caller stops waiting, the
/// callee stops the producer.
#[tokio::test]
async fn a_stream_deadline() {
    let f = fixture();
    let p = pair(Kind::Mem, f.registry.clone()).await;
    let s = p.client.bootstrap("streaming", None).await.unwrap();
    let options = StreamOptions::default().timeout(Duration::from_millis(150));
    let items = collect(s.call_stream_with("slow", Value::new(&(20,)).unwrap(), options)).await;
    let last = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code, Code::DeadlineExceeded);
    assert!(items.len() > 2, "some items came before the deadline");
    eventually("the callee stopped it too", || {
        p.server.stats().answers == 0
    })
    .await;
}

#[tokio::test]
async fn calling_a_stream_method_the_wrong_way() {
    let f = fixture();
    let p = pair(Kind::Mem, f.registry.clone()).await;
    let demo = p.client.bootstrap("demo", None).await.unwrap();
    let r = demo.call("count", Value::new(&(3,)).unwrap()).await;
    assert_status(&r, Code::InvalidArgument, None);
    let items = collect(demo.call_stream("square", Value::new(&(3,)).unwrap())).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().code, Code::InvalidArgument);
    let items = collect(demo.call_stream("nope", Value::null())).await;
    assert_eq!(items[0].as_ref().unwrap_err().code, Code::Unimplemented);
}

#[tokio::test]
async fn open_streams_are_limited() {
    let f = fixture();
    let mut server = SessionConfig::default();
    server.limits.max_open_streams = 1;
    let p = pair_with(
        Kind::Mem,
        f.registry.clone(),
        server,
        SessionConfig::default(),
    )
    .await;
    let s = p.client.bootstrap("streaming", None).await.unwrap();
    let mut first = s.call_stream("forever", Value::null());
    first.next().await.unwrap().unwrap();
    let second = collect(s.call_stream("forever", Value::null())).await;
    let err = second[0].as_ref().unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    assert_eq!(err.reason, Some(Reason::MAX_OPEN_STREAMS));
}

/// Client → server: items written to a sink the server handed out arrive in
/// order, with never more than the window unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_through_a_sink() {
    for kind in ALL {
        let f = fixture();
        let p = pair(kind, f.registry.clone()).await;
        let s = p.client.bootstrap("streaming", None).await.unwrap();
        let upload = s
            .call("upload", Value::null())
            .await
            .unwrap()
            .cap(0)
            .unwrap();
        let mut writer = SinkWriter::new(upload);
        for i in 0..2_000u64 {
            writer.send(Value::new(&i).unwrap()).await.unwrap();
        }
        assert!(
            writer.max_in_flight() <= 32,
            "{kind:?}: {}",
            writer.max_in_flight()
        );
        let ended = f.ended.notified();
        writer.end().await.unwrap();
        within(Duration::from_secs(5), "the upload to end", ended).await;
        let received = f.received.lock().unwrap().clone();
        let in_order = received.iter().copied().eq(0..2_000);
        assert!(
            in_order,
            "{kind:?}: {} items, first out of order at {:?}",
            received.len(),
            received.iter().enumerate().find(|(i, v)| *i as u64 != **v)
        );
    }
}

/// Both directions at once: the client passes its own sink for the output
/// and writes into the server's sink for the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streaming() {
    for kind in ALL {
        let f = fixture();
        let p = pair(kind, f.registry.clone()).await;
        let s = p.client.bootstrap("streaming", None).await.unwrap();
        let (out, results) = sink(16);
        let input = s
            .call("uppercase", Value::capability(out))
            .await
            .unwrap()
            .cap(0)
            .unwrap();
        let mut writer = SinkWriter::with_window(input, 4);
        for word in ["one", "two", "three", "four", "five", "six"] {
            writer.send(Value::new(word).unwrap()).await.unwrap();
        }
        writer.end().await.unwrap();
        let got: Vec<String> = within(
            Duration::from_secs(5),
            "the results",
            results.collect::<Vec<_>>(),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().decode().unwrap())
        .collect();
        assert_eq!(
            got,
            ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX"],
            "{kind:?}"
        );
    }
}

/// A sink answers writes at once within its window, then only as items are
/// taken; a writer that goes away without `end` is reported.
#[tokio::test]
async fn a_sink_window_and_an_abandoned_sink() {
    let (cap, mut items) = sink(1);
    cap.call("write", Value::new(&1).unwrap()).await.unwrap();
    let mut second = Box::pin(cap.call("write", Value::new(&2).unwrap()));
    assert!(
        futures_util::poll!(&mut second).is_pending(),
        "the window is full"
    );
    drop(cap);
    let first: i64 = items.next().await.unwrap().unwrap().decode().unwrap();
    assert_eq!(first, 1);
    second.await.unwrap();
    let second: i64 = items.next().await.unwrap().unwrap().decode().unwrap();
    assert_eq!(second, 2);
    let err = items.next().await.unwrap().unwrap_err();
    assert_eq!(err.code, Code::Cancelled);
    assert!(items.next().await.is_none());
}

/// A stream on a local object needs no credit and gives the same items.
#[tokio::test]
async fn a_local_stream() {
    let local = Capability::local(demo());
    let items = collect(local.call_stream("count", Value::new(&(5,)).unwrap())).await;
    assert_eq!(items.len(), 5);
}

/// On the wire: a callee that sends more items than granted is a protocol
/// violation; an item for a question that is not a stream too.
#[tokio::test]
async fn items_beyond_the_credit_are_a_protocol_violation() {
    let (session, mut raw) = Raw::connect(
        Registry::new(),
        SessionConfig::default(),
        &Default::default(),
    )
    .await;
    let x = raw.serve_bootstrap(&session, 5).await;
    // Window 4: credit goes back two items at a time, and only one is read.
    let mut items = x.call_stream_with("s", Value::null(), StreamOptions::default().window(4));
    let first = tokio::spawn(async move {
        let first = items.next().await;
        (first, items)
    });
    let Some(Frame::Call(call)) = raw.recv().await else {
        panic!("stream call")
    };
    assert_eq!(call.stream, Some(4));
    for i in 0..5 {
        raw.send(Frame::Item(StreamItem {
            id: call.id,
            value: Payload::encode(Codec::Json, &i).unwrap(),
            caps: vec![],
        }))
        .await;
    }
    let status = raw
        .expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
    assert!(status.message.contains("credit"), "{status}");
    let (first, items) = within(Duration::from_secs(5), "the reader", first)
        .await
        .unwrap();
    assert_eq!(first.unwrap().unwrap().decode::<i64>().unwrap(), 0);
    let rest = collect(items).await;
    assert_eq!(
        rest.last().unwrap().as_ref().unwrap_err().code,
        Code::Unavailable
    );
}

/// A writer that aborts a sink: its receiver ends with that error, over a
/// connection.
#[tokio::test]
async fn an_aborted_sink_ends_with_the_writers_error() {
    let (cap, mut items) = sink(4);
    let registry = Registry::new();
    let _h = registry
        .serve(
            "s",
            "1",
            Methods::new("S").method("sink", move |_args, _ctx| {
                let cap = cap.clone();
                async move { Ok(Value::capability(cap)) }
            }),
        )
        .unwrap();
    let p = pair(Kind::Tcp, registry).await;
    let s = p.client.bootstrap("s", None).await.unwrap();
    let remote = s.call("sink", Value::null()).await.unwrap().cap(0).unwrap();
    let mut w = SinkWriter::new(remote);
    w.send(Value::new(&1).unwrap()).await.unwrap();
    w.abort(Status::new(Code::Aborted, "disk full"))
        .await
        .unwrap();
    assert_eq!(
        items
            .next()
            .await
            .unwrap()
            .unwrap()
            .decode::<i64>()
            .unwrap(),
        1
    );
    let err = items.next().await.unwrap().unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (Code::Aborted, "disk full")
    );
    assert!(items.next().await.is_none());
}

/// A `result` for a question that is a stream is a protocol violation.
#[tokio::test]
async fn a_result_for_a_stream_question_is_a_violation() {
    let (session, mut raw) = Raw::connect(
        Registry::new(),
        SessionConfig::default(),
        &Default::default(),
    )
    .await;
    let x = raw.serve_bootstrap(&session, 5).await;
    let mut items = x.call_stream("s", Value::null());
    let reader = tokio::spawn(async move { items.next().await });
    let Some(Frame::Call(call)) = raw.recv().await else {
        panic!("stream call")
    };
    raw.send(Frame::Result(capwire::proto::CallResult {
        id: call.id,
        outcome: capwire::proto::Outcome::Ok {
            value: Payload::encode(Codec::Json, &1).unwrap(),
            caps: vec![],
        },
    }))
    .await;
    raw.expect_goaway_and_close(Code::Aborted, Some(Reason::PROTOCOL_VIOLATION))
        .await;
    let first = within(Duration::from_secs(5), "the reader", reader)
        .await
        .unwrap();
    assert_eq!(first.unwrap().unwrap_err().code, Code::Unavailable);
}
