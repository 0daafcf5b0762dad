//! Our thread-per-core runtime on the `io-uring` crate: one ring per worker thread, a
//! local executor, and operations as futures that own their buffers and cancel
//! themselves when dropped.
//!
//! Why our own and not tokio-uring or monoio: see docs/design.md ("The io_uring layer").
//! It offers what the data path needs and nothing more. Linux 6.1 or later (DEFER_TASKRUN).

mod op;
mod ops;
mod runtime;

pub use ops::{
    BufOp, BufResult, Elapsed, Incoming, PollMulti, PollOnce, Socket, connect, flush_submissions,
    poll, read, recv, recv_limit, send, send_all, sleep, timeout,
};
pub use runtime::{Runtime, spawn, yield_now};

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use super::*;

    fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, Socket::from_owned(OwnedFd::from(server)))
    }

    #[test]
    fn recv_and_send_move_bytes_both_ways() {
        let (mut client, server) = pair();
        client.write_all(b"ping").unwrap();
        let rt = Runtime::new().unwrap();
        let got = rt
            .block_on(async move {
                let (res, buf) = recv(server.as_raw_fd(), Vec::with_capacity(64)).await;
                assert_eq!(res.unwrap(), 4, "recv should return the 4 bytes sent");
                let (res, _) = send_all(server.as_raw_fd(), b"pong".to_vec(), 0..4).await;
                res.unwrap();
                buf
            })
            .unwrap();
        assert_eq!(got, b"ping");
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong", "client should read what the ring sent");
    }

    #[test]
    fn timeout_cancels_a_pending_recv_and_the_bytes_arrive_later() {
        let (mut client, server) = pair();
        let rt = Runtime::new().unwrap();
        let fd = server.as_raw_fd();
        let started = Instant::now();
        let outcome = rt
            .block_on(async move {
                let first =
                    timeout(Duration::from_millis(50), recv(fd, Vec::with_capacity(8))).await;
                assert!(
                    first.is_err(),
                    "nothing was sent, so the recv must time out"
                );
                client.write_all(b"late").unwrap();
                let (res, buf) = recv(fd, Vec::with_capacity(8)).await;
                (res.unwrap(), buf, server)
            })
            .unwrap();
        assert_eq!(
            outcome.0, 4,
            "the bytes sent after the cancelled recv must not be lost"
        );
        assert_eq!(outcome.1, b"late");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timer fired far too late"
        );
    }

    #[test]
    fn multishot_accept_yields_every_connection_and_spawned_tasks_run() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for mut c in &clients {
            c.write_all(b"x").unwrap();
        }
        let rt = Runtime::new().unwrap();
        let total = rt
            .block_on(async move {
                let total = std::rc::Rc::new(std::cell::Cell::new(0usize));
                let mut incoming = Incoming::new(listener.as_raw_fd());
                for _ in 0..5 {
                    let sock = incoming.next().await.unwrap();
                    let total = total.clone();
                    spawn(async move {
                        let (res, _) = recv(sock.as_raw_fd(), Vec::with_capacity(4)).await;
                        total.set(total.get() + res.unwrap());
                    });
                }
                while total.get() < 5 {
                    sleep(Duration::from_millis(1)).await;
                }
                total.get()
            })
            .unwrap();
        assert_eq!(
            total, 5,
            "each of the five connections should deliver one byte"
        );
        drop(clients);
    }

    #[test]
    fn multishot_poll_reports_each_arrival_without_rearming() {
        let (mut client, server) = pair();
        let rt = Runtime::new().unwrap();
        let fd = server.as_raw_fd();
        let reports = rt
            .block_on(async move {
                let mut poll = PollMulti::new(fd, libc::POLLIN);
                let mut reports = 0;
                for round in 0..3u8 {
                    client.write_all(&[round]).unwrap();
                    let events = std::future::poll_fn(|cx| poll.poll_next(cx)).await.unwrap();
                    assert!(
                        events & libc::POLLIN as u32 != 0,
                        "round {round}: no POLLIN"
                    );
                    let mut byte = [0u8; 1];
                    assert_eq!(crate::sys::net::recv(fd, &mut byte).unwrap(), 1);
                    assert_eq!(byte[0], round, "bytes must arrive in order");
                    reports += 1;
                }
                (reports, server)
            })
            .unwrap();
        assert_eq!(reports.0, 3, "one readiness report per write");
    }

    #[test]
    fn connect_reaches_a_listener_and_refused_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async move {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            connect(sock.as_raw_fd(), addr.into())
                .await
                .expect("connect to a live listener");
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let err = connect(sock.as_raw_fd(), closed.into()).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "got {err}"
            );
        })
        .unwrap();
    }
}
