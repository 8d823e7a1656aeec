//! Executor, timers, timeouts, task cancellation and the cross-thread channel.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use zmesh_rt::{DriverKind, channel, sleep, sleep_until, spawn, timeout};

fn each(f: impl Fn(DriverKind)) {
    for kind in common::drivers() {
        f(kind);
    }
}

#[test]
fn spawn_runs_tasks_and_returns_output() {
    each(|kind| {
        let rt = common::runtime(kind);
        assert_eq!(rt.kind(), kind);
        let out = rt.block_on(async {
            let tasks: Vec<_> = (0..100u32).map(|i| spawn(async move { i * 2 })).collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await;
            }
            sum
        });
        assert_eq!(out, (0..100).map(|i| i * 2).sum());
        // Detached tasks run on while block_on drives another future.
        let hit = Rc::new(Cell::new(false));
        let h = hit.clone();
        rt.block_on(async move {
            spawn(async move { h.set(true) }).detach();
            sleep(Duration::from_millis(5)).await;
        });
        assert!(hit.get());
    });
}

#[test]
fn timers_fire_in_deadline_order() {
    each(|kind| {
        let rt = common::runtime(kind);
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        rt.block_on({
            let order = order.clone();
            async move {
                let tasks: Vec<_> = [30u64, 10, 20, 0]
                    .into_iter()
                    .map(|ms| {
                        let order = order.clone();
                        spawn(async move {
                            sleep(Duration::from_millis(ms)).await;
                            order.borrow_mut().push(ms);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
        });
        assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
        assert!(start.elapsed() >= Duration::from_millis(30));
    });
}

#[test]
fn sleep_reset_and_timeout() {
    each(|kind| {
        let rt = common::runtime(kind);
        rt.block_on(async {
            let start = Instant::now();
            let mut s = sleep_until(start + Duration::from_secs(60));
            // Poll once so it is registered, then move the deadline earlier and later.
            assert!(timeout(Duration::from_millis(5), &mut s).await.is_err());
            s.reset(Instant::now() + Duration::from_millis(20));
            (&mut s).await;
            assert!(start.elapsed() >= Duration::from_millis(20));
            assert!(start.elapsed() < Duration::from_secs(10));
            s.reset(Instant::now() + Duration::from_millis(10));
            s.await;

            let e = timeout(Duration::from_millis(10), sleep(Duration::from_secs(5))).await;
            let e = e.unwrap_err();
            assert_eq!(e.to_string(), "deadline has elapsed");
            let _: &dyn std::error::Error = &e;
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        });
    });
}

struct SetOnDrop(Rc<Cell<bool>>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn dropping_a_task_cancels_it() {
    each(|kind| {
        let rt = common::runtime(kind);
        let ran = Rc::new(Cell::new(false));
        let dropped = Rc::new(Cell::new(false));
        rt.block_on({
            let (ran, dropped) = (ran.clone(), dropped.clone());
            async move {
                let guard = SetOnDrop(dropped);
                let t = spawn(async move {
                    let _guard = guard;
                    sleep(Duration::from_millis(20)).await;
                    ran.set(true);
                });
                sleep(Duration::from_millis(1)).await;
                drop(t);
                sleep(Duration::from_millis(40)).await;
            }
        });
        assert!(!ran.get(), "cancelled task ran to completion");
        assert!(dropped.get(), "cancelled task's future was not dropped");
    });
}

#[test]
fn channel_wakes_a_blocked_runtime() {
    each(|kind| {
        let rt = common::runtime(kind);
        let (tx, rx) = channel::<u32>();
        let sender = std::thread::spawn(move || {
            for i in 0..3 {
                // The runtime has no timers and no IO: only the eventfd can wake it.
                std::thread::sleep(Duration::from_millis(30));
                tx.send(i).unwrap();
            }
        });
        let start = Instant::now();
        let got = rt.block_on(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        assert_eq!(got, vec![0, 1, 2]);
        assert!(start.elapsed() >= Duration::from_millis(90));
        sender.join().unwrap();
        let idle = rt
            .stats()
            .idle_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            idle >= 50_000_000,
            "runtime did not block while waiting: idle {idle} ns"
        );
        let completions = rt
            .stats()
            .completions
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            completions < 50,
            "runtime spun while idle: {completions} completions"
        );

        // A spawned task (not the block_on future) is woken across threads too.
        let (tx, rx) = channel::<&'static str>();
        let got = rt.block_on(async move {
            let t = spawn(async move { rx.recv().await });
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send("hi").unwrap();
            });
            t.await
        });
        assert_eq!(got, Some("hi"));

        let (tx, rx) = channel::<u8>();
        drop(rx);
        assert_eq!(tx.send(1), Err(1));
    });
}

#[test]
fn many_timers_churn() {
    each(|kind| {
        let rt = common::runtime(kind);
        rt.block_on(async {
            // Timeouts that never fire, created and dropped in bulk (the per-request pattern).
            for _ in 0..20_000 {
                assert_eq!(timeout(Duration::from_secs(30), async { 1 }).await, Ok(1));
                let mut s = sleep(Duration::from_secs(30));
                let _ = timeout(Duration::ZERO, &mut s).await;
            }
            sleep(Duration::from_millis(1)).await;
        });
    });
}

#[test]
#[should_panic(expected = "without a zmesh-rt runtime")]
fn spawn_without_runtime_panics() {
    drop(spawn(async {}));
}

#[test]
fn driver_kind_parse_and_display() {
    assert_eq!(
        "io-uring".parse::<DriverKind>().unwrap(),
        DriverKind::IoUring
    );
    assert_eq!("uring".parse::<DriverKind>().unwrap(), DriverKind::IoUring);
    assert_eq!("epoll".parse::<DriverKind>().unwrap(), DriverKind::Epoll);
    assert!("kqueue".parse::<DriverKind>().is_err());
    assert_eq!(DriverKind::IoUring.to_string(), "io-uring");
    assert_eq!(DriverKind::Epoll.to_string(), "epoll");
    let (kind, reason) = DriverKind::detect();
    assert_eq!(kind == DriverKind::IoUring, reason.is_none());
}

#[test]
fn public_types_have_the_promised_auto_traits() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn unpin<T: Unpin>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync_clone::<zmesh_rt::Sender<Vec<u8>>>();
    send_sync_clone::<std::sync::Arc<zmesh_rt::RuntimeStats>>();
    unpin::<zmesh_rt::Sleep>();
    unpin::<zmesh_rt::TcpStream>();
    error::<zmesh_rt::Elapsed>();
}
