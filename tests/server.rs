//! The server over loopback: every command through the client, pipelining,
//! batches, bad frames answered and closed while others keep booking, the
//! handshake, the connection cap, and a shutdown under load after which every
//! acknowledged reservation is present.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use yeyak::client::{Client, ClientError};
use yeyak::durable::DurableEngine;
use yeyak::inventory::SlotIndex;
use yeyak::protocol::body::PersonQuery;
use yeyak::protocol::handshake::Role;
use yeyak::protocol::{code, opcode};
use yeyak::rules::Channel;
use yeyak::server::keys::{KeyRing, DEMO_OPERATOR_ID};
use yeyak::server::reactor::Reactor;
use yeyak::server::{Clock, Server, ServerConfig};
use yeyak::state::{BookingRequest, Refusal, ResultCode};

struct Running {
    server: Server,
    keys: KeyRing,
    _directory: Option<tempfile::TempDir>,
}

/// The test `$body` as two tests: on the tokio reactor, and on tokio-uring
/// where this process may use io_uring (else it says so and passes).
macro_rules! on_both_reactors {
    ($tokio:ident, $uring:ident, $body:ident) => {
        #[test]
        fn $tokio() {
            $body(Reactor::Tokio);
        }

        #[test]
        fn $uring() {
            if !yeyak::server::reactor::uring_available() {
                eprintln!("io_uring is not available here: the tokio-uring reactor goes untested");
                return;
            }
            $body(Reactor::Uring);
        }
    };
}

/// The engine and keys of the small campaign in `directory` (written there
/// first unless it is there), and the configuration that serves it on the
/// campaign's first open evening.
fn open_in(directory: &std::path::Path, config: ServerConfig) -> (DurableEngine, KeyRing, ServerConfig) {
    let campaign = directory.join("campaign.toml");
    let rules = match std::fs::read_to_string(&campaign) {
        Ok(text) => yeyak::config::CampaignRules::parse(&text).unwrap(),
        Err(_) => write_small_campaign(directory),
    };
    let (engine, _) = DurableEngine::open(directory, small_log_options(), false).unwrap();
    let (keys, _) = KeyRing::load(directory, true).unwrap();
    let clock = Clock::Simulated { start_ms: open_evening_ms(&rules), since: Instant::now() };
    (engine, keys, ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), clock, ..config })
}

fn start_in(directory: &std::path::Path, config: ServerConfig) -> (Server, KeyRing) {
    let (engine, keys, config) = open_in(directory, config);
    (Server::start(engine, keys.clone(), config).unwrap(), keys)
}

fn start(config: ServerConfig) -> Running {
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), config);
    Running { server, keys, _directory: Some(directory) }
}

fn gateway(server: &Server, keys: &KeyRing) -> Client {
    let (id, key) = keys.first(Role::Gateway).unwrap();
    Client::connect(server.local_address(), Role::Gateway, id, key).unwrap()
}

fn wire_booking(index: u64, slot: u32, key: u64) -> BookingRequest {
    booking(index, slot, key)
}

on_both_reactors!(
    every_command_through_the_client,
    every_command_through_the_client_on_io_uring,
    every_command_through_the_client_on
);

fn every_command_through_the_client_on(reactor: Reactor) {
    let running = start(ServerConfig { reactor, ..ServerConfig::default() });
    let mut client = gateway(&running.server, &running.keys);
    assert_eq!(client.reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)));
    assert_eq!(client.reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)), "a retry gets the first answer");
    assert_eq!(client.reserve(&wire_booking(1, 6, 2)).unwrap(), Err(Refusal::AlreadyBooked { existing: SlotIndex(5) }));
    let query = PersonQuery { person: person(1) };
    assert_eq!(client.reservation(&query).unwrap(), Ok(Some(SlotIndex(5))));
    assert_eq!(client.change(&wire_booking(1, 7, 3)).unwrap(), Ok(SlotIndex(7)));
    assert_eq!(client.cancel(&wire_booking(1, 0, 4)).unwrap(), Ok(SlotIndex(7)));
    assert_eq!(client.reservation(&query).unwrap(), Ok(None));
    assert_eq!(
        client.reserve(&wire_booking(2, 99_999_999, 1)).unwrap(),
        Err(Refusal::UnknownSlot { slot: 99_999_999 })
    );
    let answers =
        client.reserve_batch(&[wire_booking(3, 10, 1), wire_booking(4, 11, 1), wire_booking(3, 12, 2)]).unwrap();
    let codes: Vec<u8> = answers.iter().map(|a| a.code).collect();
    assert_eq!(codes, [0, 0, 41], "third: already booked");
    // Availability: slot 10 lost a seat to person 3.
    let date = yeyak::calendar::Date::parse("2021-08-26").unwrap();
    let site = client.site_availability(&yeyak::protocol::SiteQuery { site_id: 1, date }).unwrap().unwrap();
    assert_eq!((site.first_slot, site.seats.len()), (SlotIndex(0), 18));
    let engine = running.server.engine().engine();
    // The server's clock is the campaign's first open evening: nothing on `date` has begun.
    let engine_view = engine.site_availability(1, date, &engine.booking_moment(0)).unwrap();
    assert_eq!(site.seats, engine_view.remaining);
    let query = yeyak::protocol::RegionQuery { region_id: 1, date, cursor: 0, limit: 3 };
    let page = client.region_availability(&query).unwrap().unwrap();
    assert_eq!((page.sites.len(), page.next_cursor), (3, Some(3)));
    let too_large = yeyak::protocol::RegionQuery { limit: 100_000, ..query };
    assert!(matches!(client.region_availability(&too_large).unwrap(), Err(Refusal::PageTooLarge { .. })));
    let unknown = client.site_availability(&yeyak::protocol::SiteQuery { site_id: 999, date }).unwrap();
    assert_eq!(unknown, Err(Refusal::UnknownSite { site_id: 999 }));
    // A day without appointments: the refusal says which days have them.
    let eve = date.add_days(-1);
    let refusal =
        client.region_availability(&yeyak::protocol::RegionQuery { date: eve, ..query }).unwrap().unwrap_err();
    let (first, days) = running.server.engine().engine().inventory().service_days();
    assert_eq!(refusal, Refusal::NotAServiceDay { date: eve, first: date, days });
    let last = date.add_days(i32::from(days) - 1);
    assert_eq!(
        refusal.to_string(),
        format!("2021-08-25 is not a service day: appointments run from {first} to {last}")
    );
    let after = client.site_availability(&yeyak::protocol::SiteQuery { site_id: 1, date: last.add_days(1) }).unwrap();
    assert!(matches!(after, Err(Refusal::NotAServiceDay { .. })), "{after:?}");
    assert!(client.site_availability(&yeyak::protocol::SiteQuery { site_id: 1, date: last }).unwrap().is_ok());
    let stats = client.stats().unwrap();
    assert!(stats.counter("reservations").unwrap() >= 3, "reservations counted: {stats:?}");
    let [p50, p99, p999, max] =
        ["sync p50 µs", "sync p99 µs", "sync p999 µs", "sync max µs"].map(|name| stats.counter(name).unwrap());
    assert!(
        stats.counter("log syncs").unwrap() > 0 && p50 > 0 && p50 <= p99 && p99 <= p999 && p999 <= max + max / 100 + 1,
        "sync percentiles: {stats:?}"
    );
    // Refusals by result code: each refusal above, and a total that is their sum.
    let refused = |code: ResultCode| stats.refusals_by_code.iter().find(|(c, _)| *c == code as u8).map(|(_, n)| *n);
    for code in [ResultCode::UnknownSlot, ResultCode::AlreadyBooked, ResultCode::PageTooLarge, ResultCode::UnknownSite]
    {
        assert!(refused(code) >= Some(1), "{code:?} counted: {stats:?}");
    }
    // `refusals` counts the commands the engine refused: its codes are below 100.
    let total: u64 = stats.refusals_by_code.iter().filter(|(c, _)| *c < 100).map(|(_, n)| n).sum();
    assert_eq!(stats.counter("refusals"), Some(total));
    // A gateway may not run operator commands, nor book as an operator; the connection goes on.
    let refused = client.call(opcode::ADD_CAPACITY, |out| out.extend_from_slice(&[0; 8])).unwrap_err();
    assert!(matches!(refused, ClientError::Refused(answer) if answer.code == code::NOT_ALLOWED));
    let as_operator = BookingRequest { channel: Channel::Operator { operator_id: 7 }, ..wire_booking(5, 1, 1) };
    assert!(matches!(client.reserve(&as_operator), Err(ClientError::Refused(a)) if a.code == code::NOT_ALLOWED));
    // The same inside a batch refuses the batch, and the connection goes on.
    let refused = client.reserve_batch(&[wire_booking(6, 2, 1), as_operator]).unwrap_err();
    assert!(matches!(refused, ClientError::Refused(a) if a.code == code::NOT_ALLOWED));
    assert_eq!(client.reserve(&wire_booking(5, 1, 1)).unwrap(), Ok(SlotIndex(1)));
    // Requests the network thread refused whole are counted by their code
    // too (three NOT_ALLOWED above), and not among the engine's `refusals`.
    let after = client.stats().unwrap();
    let not_allowed = after.refusals_by_code.iter().find(|(c, _)| *c == code::NOT_ALLOWED).map(|(_, n)| *n);
    assert_eq!(not_allowed, Some(3), "{after:?}");
    assert_eq!(after.counter("refusals"), stats.counter("refusals"), "engine refusals unchanged");
    // An operator reads a slot's capacity (zero seats), adds to it, and a
    // retry of the same change adds nothing more; a stale one is refused.
    let key = running.keys.key(Role::Operator, DEMO_OPERATOR_ID).unwrap();
    let mut operator = Client::connect(running.server.local_address(), Role::Operator, DEMO_OPERATOR_ID, key).unwrap();
    let mut add = |seats: u32, expected_capacity: u32| {
        let (_, body) = operator
            .call(opcode::ADD_CAPACITY, |out| {
                yeyak::protocol::CapacityAddition { slot: SlotIndex(1), seats, expected_capacity }.encode(out)
            })
            .unwrap();
        yeyak::protocol::Answer::decode(&body).unwrap().0
    };
    // Zero seats reads the capacity, whatever capacity it names.
    let read = add(0, 0);
    assert!(read.is_ok(), "{read:?}");
    let capacity = read.value;
    assert!(capacity > 0);
    let read = add(0, capacity + 1);
    assert!(read.is_ok() && read.value == capacity, "{read:?}");
    for _attempt in 0..2 {
        let answer = add(3, capacity);
        assert!(answer.is_ok() && answer.value == capacity + 3, "{answer:?}");
    }
    assert_eq!(
        add(1, capacity).to_refusal(),
        Some(Refusal::CapacityChanged { slot: SlotIndex(1), capacity: capacity + 3 })
    );
    let slot_now = running.server.engine().engine().slot_seats(SlotIndex(1)).unwrap().1;
    assert_eq!(slot_now, capacity + 3, "added once");
    running.server.shutdown().unwrap();
}

on_both_reactors!(
    ten_thousand_pipelined_requests_on_one_connection,
    ten_thousand_pipelined_requests_on_one_connection_on_io_uring,
    ten_thousand_pipelined_requests_on_one_connection_on
);

fn ten_thousand_pipelined_requests_on_one_connection_on(reactor: Reactor) {
    let running = start(ServerConfig { in_flight_max: 10_000, reactor, ..ServerConfig::default() });
    let mut client = gateway(&running.server, &running.keys);
    let mut sent = Vec::new();
    for index in 0..10_000u64 {
        let booking = wire_booking(100 + index, (index % 10_000) as u32, 1);
        sent.push(client.send(opcode::RESERVE, |out| booking.encode(out)).unwrap());
    }
    let mut ok = 0;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..sent.len() {
        let (header, body) = client.receive().unwrap();
        assert_eq!(header.opcode, opcode::RESERVE);
        assert!(seen.insert(header.request_id), "each request answered once");
        ok += usize::from(yeyak::protocol::Answer::decode(&body).unwrap().0.is_ok());
    }
    assert_eq!(seen.len(), 10_000);
    assert!(ok > 9_000, "{ok} booked");
    running.server.shutdown().unwrap();
}

on_both_reactors!(
    bad_frames_are_answered_and_closed_while_others_keep_booking,
    bad_frames_are_answered_and_closed_while_others_keep_booking_on_io_uring,
    bad_frames_are_answered_and_closed_while_others_keep_booking_on
);

fn bad_frames_are_answered_and_closed_while_others_keep_booking_on(reactor: Reactor) {
    let running = start(ServerConfig { reactor, ..ServerConfig::default() });
    let mut good = gateway(&running.server, &running.keys);
    let mut valid = Vec::new();
    yeyak::protocol::encode_frame(&mut valid, opcode::PING, 0, 5, |_| {});
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), code::MALFORMED),
        (
            "version",
            {
                let mut f = valid.clone();
                f[2] = 9;
                f
            },
            code::UNSUPPORTED_VERSION,
        ),
        (
            "checksum",
            {
                let mut f = valid.clone();
                f[21] ^= 1;
                f
            },
            code::BAD_CHECKSUM,
        ),
        (
            "oversized",
            {
                let mut f = valid.clone();
                f[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
                f
            },
            code::FRAME_TOO_LARGE,
        ),
        (
            "unknown opcode",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, 0x66, 0, 1, |_| {});
                f
            },
            code::UNKNOWN_OPCODE,
        ),
        (
            "availability in a batch",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, opcode::BATCH, 0, 1, |out| {
                    yeyak::protocol::body::put_batch_header(out, 1);
                    yeyak::protocol::body::put_batch_item(out, opcode::REGION_AVAILABILITY, |b| {
                        let date = yeyak::calendar::Date::parse("2021-08-26").unwrap();
                        yeyak::protocol::RegionQuery { region_id: 1, date, cursor: 0, limit: 100 }.encode(b)
                    });
                });
                f
            },
            code::MALFORMED,
        ),
        (
            "short body",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, opcode::RESERVE, 0, 1, |o| o.extend_from_slice(&[1; 39]));
                f
            },
            code::MALFORMED,
        ),
        (
            "batch over the limit",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, opcode::BATCH, 0, 1, |out| {
                    yeyak::protocol::body::put_batch_header(out, yeyak::protocol::BATCH_COMMANDS_MAX + 1);
                });
                f
            },
            code::BATCH_TOO_LARGE,
        ),
        (
            "a body on PING",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, opcode::PING, 0, 1, |o| o.push(1));
                f
            },
            code::MALFORMED,
        ),
        (
            "a request flagged as a reply",
            {
                let mut f = Vec::new();
                yeyak::protocol::encode_frame(&mut f, opcode::STATS, yeyak::protocol::frame::flag::REPLY, 1, |_| {});
                f
            },
            code::MALFORMED,
        ),
    ];
    for (index, (name, bytes, expected)) in cases.into_iter().enumerate() {
        let mut bad = gateway(&running.server, &running.keys);
        bad.send_raw(&bytes).unwrap();
        let (header, body) = bad.receive().unwrap();
        assert_eq!(header.opcode, opcode::ERROR, "{name}");
        assert_eq!(yeyak::protocol::Answer::decode(&body).unwrap().0.code, expected, "{name}");
        assert!(matches!(bad.receive(), Err(ClientError::Closed) | Err(ClientError::Io(_))), "{name}: closed after");
        let booked = good.reserve(&wire_booking(500 + index as u64, 200 + index as u32, 1)).unwrap();
        assert!(booked.is_ok(), "{name}: the other client goes on: {booked:?}");
    }
    running.server.shutdown().unwrap();
}

/// A TCP relay to `server` that can stop passing the engine's bytes back,
/// as a network that loses the answers does.
fn lossy_relay(server: SocketAddr) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let answers_pass = std::sync::Arc::new(AtomicBool::new(true));
    let pass = std::sync::Arc::clone(&answers_pass);
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut engine = std::net::TcpStream::connect(server).unwrap();
        let (mut to_engine, mut from_engine) = (engine.try_clone().unwrap(), client.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_engine, &mut to_engine);
        });
        let mut chunk = [0; 4096];
        while let Ok(read @ 1..) = engine.read(&mut chunk) {
            if pass.load(Ordering::Acquire) && client.write_all(&chunk[..read]).is_err() {
                break;
            }
        }
    });
    (address, answers_pass)
}

#[test]
fn an_answer_lost_on_the_way_is_found_by_a_retry_with_the_same_key() {
    let running = start(ServerConfig::default());
    let (relay, answers_pass) = lossy_relay(running.server.local_address());
    let (id, key) = running.keys.first(Role::Gateway).unwrap();
    let mut unlucky = Client::connect(relay, Role::Gateway, id, key).unwrap();
    answers_pass.store(false, std::sync::atomic::Ordering::Release);
    unlucky.set_timeout(Some(Duration::from_millis(200))).unwrap();
    let request = wire_booking(77, 12, 5);
    let lost = unlucky.reserve(&request);
    assert!(matches!(lost, Err(ClientError::TimedOut(_))), "{lost:?}");
    // Out of step with the engine now (its reply may still come): not used again.
    assert!(matches!(unlucky.stats(), Err(ClientError::Broken)));
    // The engine did book: the same idempotency key gets the first answer, once.
    let mut retry = gateway(&running.server, &running.keys);
    assert_eq!(retry.reserve(&request).unwrap(), Ok(SlotIndex(12)));
    let other = wire_booking(77, 13, 6);
    assert_eq!(retry.reserve(&other).unwrap(), Err(Refusal::AlreadyBooked { existing: SlotIndex(12) }));
    running.server.shutdown().unwrap();
}

/// Connects a blocking client, with `timeout` for connecting and calls, to a
/// peer that does `behave` with the connection instead of answering as an
/// engine would; asserts the client gives up with `TimedOut` after about
/// the timeout (not at the OS's, nor when the peer is done).
fn times_out_against(what: &str, timeout: Duration, behave: impl FnOnce(std::net::TcpStream) + Send + 'static) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || behave(listener.accept().unwrap().0));
    let started = Instant::now();
    match Client::connect_within(address, Role::Gateway, 1, &[7; 32], timeout, timeout) {
        Err(ClientError::TimedOut(waited)) => assert_eq!(waited, timeout),
        other => panic!("{what}: {:?}", other.map(|_| ())),
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{what}: gave up after {waited:?}, not after the timeout");
    peer.join().unwrap();
}

#[test]
fn a_peer_that_never_answers_times_the_blocking_client_out() {
    // Accepts, reads, never answers: as a stalled engine or another service would.
    times_out_against("a silent peer", Duration::from_millis(200), |mut stream| {
        let mut sink = [0; 1024];
        while std::io::Read::read(&mut stream, &mut sink).is_ok_and(|read| read > 0) {}
    });
}

#[test]
fn a_timeout_too_long_to_have_an_end_is_no_timeout() {
    let running = start(ServerConfig::default());
    let mut client = gateway(&running.server, &running.keys);
    client.set_timeout(Some(Duration::MAX)).unwrap();
    assert_eq!(client.reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)));
    assert!(client.stats().is_ok());
    running.server.shutdown().unwrap();
}

#[test]
fn a_peer_that_trickles_a_reply_times_the_blocking_client_out_all_the_same() {
    // Sends the start of a long frame a byte every 10 ms: each read gets
    // something well within the timeout, the reply never completes.
    times_out_against("a trickling peer", Duration::from_millis(300), |mut stream| {
        let mut frame = Vec::new();
        yeyak::protocol::encode_frame(&mut frame, opcode::HELLO, yeyak::protocol::frame::flag::REPLY, 0, |out| {
            out.extend_from_slice(&[0; 1000])
        });
        for byte in &frame {
            if std::io::Write::write_all(&mut stream, &[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn only_proven_keys_get_in_and_connections_are_capped() {
    let running = start(ServerConfig { connections_max: 3, ..ServerConfig::default() });
    let address = running.server.local_address();
    let (id, key) = running.keys.first(Role::Gateway).unwrap();
    let wrong = vec![0x55; 32];
    assert!(matches!(Client::connect(address, Role::Gateway, id, &wrong), Err(ClientError::Unauthenticated)));
    assert!(
        matches!(Client::connect(address, Role::Operator, id, key), Err(ClientError::Unauthenticated)),
        "a gateway key is no operator key"
    );
    // Skipping the handshake: UNAUTHENTICATED.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut frame = Vec::new();
    yeyak::protocol::encode_frame(&mut frame, opcode::RESERVE, 0, 1, |out| wire_booking(1, 1, 1).encode(out));
    std::io::Write::write_all(&mut stream, &frame).unwrap();
    let mut reply = vec![0; 40];
    std::io::Read::read_exact(&mut stream, &mut reply).unwrap();
    assert_eq!(reply[3], opcode::ERROR);
    assert_eq!(reply[24], code::UNAUTHENTICATED);
    drop(stream);
    // A HELLO flagged as a reply is no request: MALFORMED, and closed.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let hello = yeyak::protocol::handshake::Hello {
        version_min: 1,
        version_max: 1,
        role: Role::Gateway,
        key_id: id,
        client_nonce: [7; 32],
    };
    let mut frame = Vec::new();
    let reply_flag = yeyak::protocol::frame::flag::REPLY;
    yeyak::protocol::encode_frame(&mut frame, opcode::HELLO, reply_flag, 9, |out| hello.encode(out));
    std::io::Write::write_all(&mut stream, &frame).unwrap();
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut reply).unwrap();
    let (header, body) = yeyak::protocol::decode_frame(&reply, 64).unwrap();
    assert_eq!((header.opcode, header.request_id, body[0]), (opcode::ERROR, 9, code::MALFORMED));
    assert_eq!(reply.len(), 40, "nothing after the refusal: the connection closed");
    drop(stream);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _kept: Vec<Client> = (0..3).map(|_| gateway(&running.server, &running.keys)).collect();
    match Client::connect(address, Role::Gateway, id, key) {
        Err(ClientError::Refused(answer)) => assert_eq!((answer.code, answer.value), (code::TOO_MANY_CONNECTIONS, 3)),
        other => panic!("a fourth connection: {:?}", other.map(|_| ())),
    }
    drop(_kept);
    running.server.shutdown().unwrap();
}

on_both_reactors!(
    shutdown_under_load_keeps_every_acknowledged_reservation,
    shutdown_under_load_keeps_every_acknowledged_reservation_on_io_uring,
    shutdown_under_load_keeps_every_acknowledged_reservation_on
);

fn shutdown_under_load_keeps_every_acknowledged_reservation_on(reactor: Reactor) {
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), ServerConfig { reactor, ..ServerConfig::default() });
    let address = server.local_address();
    let acknowledged = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (keys, acknowledged) = (&keys, &acknowledged);
            scope.spawn(move || {
                let (id, key) = keys.first(Role::Gateway).unwrap();
                let mut client = Client::connect(address, Role::Gateway, id, key).unwrap();
                for index in 0..100_000u64 {
                    let person_index = thread * 1_000_000 + index;
                    match client.reserve(&wire_booking(person_index, (person_index % 10_000) as u32, 1)) {
                        Ok(Ok(slot)) => acknowledged.lock().unwrap().push((person_index, slot)),
                        Ok(Err(_)) => {}
                        Err(_) => return, // the server went away: stop
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        server.shutdown().unwrap();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(!acknowledged.is_empty());
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    for (index, slot) in &acknowledged {
        assert_eq!(engine.reservation_of(person(*index)), Ok(Some(*slot)), "person {index}");
    }
}

#[test]
fn a_stopping_engine_answers_what_it_took_then_says_it_is_shutting_down() {
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), ServerConfig::default());
    let (id, key) = keys.first(Role::Gateway).unwrap();
    let mut client = Client::connect(server.local_address(), Role::Gateway, id, key).unwrap();
    assert_eq!(client.reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)));
    std::thread::scope(|scope| {
        scope.spawn(|| server.shutdown().unwrap());
        let (header, body) = client.receive().unwrap();
        assert_eq!((header.opcode, header.request_id), (opcode::ERROR, 0));
        let (answer, _) = yeyak::protocol::Answer::decode(&body).unwrap();
        assert_eq!(answer.code, code::SHUTTING_DOWN);
        assert!(
            matches!(client.receive(), Err(ClientError::Closed | ClientError::Io(_))),
            "then the connection closes"
        );
    });
}

#[test]
fn an_invalid_call_fails_alone_and_never_reaches_the_engine() {
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), ServerConfig::default());
    let (id, key) = keys.first(Role::Gateway).unwrap();
    let invalid =
        BookingRequest { channel: yeyak::rules::Channel::Operator { operator_id: 0 }, ..wire_booking(1, 1, 1) };
    // The blocking client refuses it before sending; the connection goes on.
    let mut client = Client::connect(server.local_address(), Role::Gateway, id, key).unwrap();
    assert!(matches!(client.reserve(&invalid), Err(ClientError::Invalid(_))));
    assert!(matches!(client.reserve_batch(&[wire_booking(2, 2, 1), invalid]), Err(ClientError::Invalid(_))));
    assert_eq!(client.reserve(&wire_booking(3, 3, 1)).unwrap(), Ok(SlotIndex(3)));
    // The async client: calls batched together with it are answered.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let async_client = runtime
        .block_on(yeyak::async_client::AsyncClient::connect(server.local_address(), Role::Gateway, id, key, 1))
        .unwrap();
    let results = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..50u64 {
            let async_client = async_client.clone();
            let booking = if index == 25 { invalid } else { wire_booking(100 + index, 100 + index as u32, 1) };
            tasks.spawn(async move { (index, async_client.reserve(&booking).await) });
        }
        tasks.join_all().await
    });
    for (index, result) in results {
        match result {
            Err(yeyak::async_client::AsyncClientError::Invalid(_)) => assert_eq!(index, 25),
            other => assert_eq!(other, Ok(Ok(SlotIndex(100 + index as u32))), "call {index}"),
        }
    }
    assert_eq!(gateway(&server, &keys).stats().unwrap().counter("bad frames"), Some(0));
}

#[test]
fn a_peer_that_does_not_read_is_not_read_from_while_others_are_served() {
    use std::io::{Read, Write};
    // 80 MB of requests and of replies: far past the 4 MiB outbox and the socket buffers.
    const REQUESTS: u64 = 2_000_000;
    let running = start(ServerConfig::default());
    let (id, key) = running.keys.first(Role::Gateway).unwrap();
    let stream =
        Client::connect(running.server.local_address(), Role::Gateway, id, key).unwrap().into_stream().unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut frames = Vec::new();
        for request_id in 1_000..1_000 + REQUESTS {
            yeyak::protocol::encode_frame(&mut frames, opcode::GET_RESERVATION, 0, request_id, |out| {
                yeyak::protocol::PersonQuery { person: person(request_id) }.encode(out)
            });
            if frames.len() >= 1 << 20 {
                writer.write_all(&frames).unwrap();
                frames.clear();
            }
        }
        writer.write_all(&frames).unwrap();
    });
    // The peer reads nothing: the engine stops reading it, and others are served.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let mut other = gateway(&running.server, &running.keys);
    assert_eq!(other.reserve(&wire_booking(1, 1, 1)).unwrap(), Ok(SlotIndex(1)));
    let read_so_far = other.stats().unwrap().counter("requests").unwrap();
    assert!(read_so_far < REQUESTS, "{read_so_far} requests read from a peer that reads nothing");
    assert!(!sender.is_finished(), "the peer could send everything without reading");
    // Once it reads, every request gets its one reply (a lost one fails the
    // read's timeout instead of hanging the test).
    let mut reader = stream;
    reader.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answered = vec![false; REQUESTS as usize];
    let (mut buffer, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
    let mut replies = 0;
    while replies < REQUESTS {
        let count = reader.read(&mut chunk).unwrap();
        assert!(count > 0, "closed after {replies} replies");
        buffer.extend_from_slice(&chunk[..count]);
        let mut used = 0;
        while let Ok((header, body)) = yeyak::protocol::decode_frame(&buffer[used..], 1 << 20) {
            let index = (header.request_id - 1_000) as usize;
            assert!(!std::mem::replace(&mut answered[index], true), "request {} answered twice", header.request_id);
            used += yeyak::protocol::FRAME_HEADER_BYTES + body.len();
            replies += 1;
        }
        buffer.drain(..used);
    }
    sender.join().unwrap();
}

/// An engine that completes the handshake and then never answers; or, with
/// `handshake` false, one that accepts connections and never says a word.
fn silent_engine(handshake: bool) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            if handshake {
                let read_frame = |stream: &mut std::net::TcpStream| {
                    let mut buffer = Vec::new();
                    loop {
                        if let Ok((header, body)) = yeyak::protocol::decode_frame(&buffer, 1 << 20) {
                            return (header, body.to_vec());
                        }
                        let mut chunk = [0u8; 4096];
                        let count = stream.read(&mut chunk).unwrap();
                        assert!(count > 0);
                        buffer.extend_from_slice(&chunk[..count]);
                    }
                };
                let reply = yeyak::protocol::frame::flag::REPLY;
                let (hello, _) = read_frame(&mut stream);
                let mut frame = Vec::new();
                let challenge = yeyak::protocol::handshake::Challenge { version: 1, server_nonce: [5; 32] };
                yeyak::protocol::encode_frame(&mut frame, opcode::HELLO, reply, hello.request_id, |out| {
                    challenge.encode(out)
                });
                stream.write_all(&frame).unwrap();
                let (proof, _) = read_frame(&mut stream);
                frame.clear();
                let welcome = yeyak::protocol::Answer::ok(0);
                yeyak::protocol::encode_frame(&mut frame, opcode::PROOF, reply, proof.request_id, |out| {
                    welcome.encode(out)
                });
                stream.write_all(&frame).unwrap();
            }
            open.push(stream); // kept open, never answered
        }
    });
    address
}

#[test]
fn the_async_client_gives_up_on_a_silent_engine_in_its_time() {
    use yeyak::async_client::{AsyncClient, AsyncClientError, AsyncClientOptions};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = AsyncClientOptions {
        connect_timeout: Duration::from_millis(200),
        call_timeout: Duration::from_millis(150),
        attempts_max: 2,
        ..AsyncClientOptions::default()
    };
    let key = [7u8; 32];
    let started = Instant::now();
    let refused = runtime.block_on(AsyncClient::connect_with(silent_engine(false), Role::Gateway, 1, &key, options));
    assert!(matches!(refused, Err(AsyncClientError::TimedOut(t)) if t == options.connect_timeout));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    let client =
        runtime.block_on(AsyncClient::connect_with(silent_engine(true), Role::Gateway, 1, &key, options)).unwrap();
    let started = Instant::now();
    let unanswered = runtime.block_on(client.reserve(&wire_booking(1, 1, 1)));
    assert_eq!(unanswered, Err(AsyncClientError::TimedOut(options.call_timeout)));
    let waited = started.elapsed();
    assert!(waited >= 2 * options.call_timeout && waited < Duration::from_secs(3), "two attempts: {waited:?}");
}

#[test]
fn a_full_ingress_queue_answers_overloaded_at_once() {
    use yeyak::protocol::body::{put_batch_header, put_batch_item};
    let running = start(ServerConfig { ingress_queue_commands: 2048, ..ServerConfig::default() });
    let mut client = gateway(&running.server, &running.keys);
    // A refusal must come at once: a read that waits this long fails the test.
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    // Stall the engine thread: its next round waits for the log's append lock, held here.
    let stall = running.server.engine().log().appender();
    // Four batches of 1,024. The first is sent alone and taken by the engine
    // thread, which then stalls; it still counts until applied, so one more
    // fills the 2,048 commands, and the rest is refused at once.
    let mut batches = Vec::new();
    for batch in 0..4u64 {
        if batch == 1 {
            client.flush().unwrap();
            let taken = Instant::now();
            while client.stats().unwrap().counter("ingress queue depth") != Some(0) {
                assert!(taken.elapsed() < Duration::from_secs(10), "the engine thread never took the first batch");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let bookings: Vec<BookingRequest> =
            (0..1024).map(|i| wire_booking(batch * 1024 + i, ((batch * 1024 + i) % 10_000) as u32, 1)).collect();
        let request_id = client
            .send(opcode::BATCH, |out| {
                put_batch_header(out, 1024);
                for booking in &bookings {
                    put_batch_item(out, opcode::RESERVE, |out| booking.encode(out));
                }
            })
            .unwrap();
        batches.push(request_id);
    }
    let (header, body) = client.receive().unwrap();
    let (answer, _) = yeyak::protocol::Answer::decode(&body).unwrap();
    assert_eq!((header.opcode, answer.code), (opcode::ERROR, code::OVERLOADED), "the first reply, while stalled");
    let mut overloaded = vec![header.request_id];
    drop(stall);
    let mut booked = 0;
    for _ in 1..batches.len() {
        let (header, body) = client.receive().unwrap();
        if header.opcode == opcode::ERROR {
            assert_eq!(yeyak::protocol::Answer::decode(&body).unwrap().0.code, code::OVERLOADED);
            overloaded.push(header.request_id);
        } else {
            let items = yeyak::protocol::body::split_reply_batch(&body).unwrap();
            booked += items.iter().filter(|item| body_is_ok(item.body)).count();
        }
    }
    assert_eq!(overloaded.len(), 2, "refused: {overloaded:?}");
    assert_eq!(booked, 1024 * (4 - overloaded.len()), "every accepted batch booked whole");
    let stats = client.stats().unwrap();
    assert_eq!(stats.counter("overloaded"), Some(overloaded.len() as u64));
    let by_code = stats.refusals_by_code.iter().find(|(c, _)| *c == code::OVERLOADED).map(|(_, n)| *n);
    assert_eq!(by_code, Some(overloaded.len() as u64), "and among the refusals by code");
    assert_eq!(stats.counter("ingress queue commands"), Some(0), "every counted command was applied and let go");
}

#[test]
fn a_connection_over_its_in_flight_limit_is_answered_too_many_in_flight_at_once() {
    use yeyak::protocol::body::{put_batch_header, put_batch_item};
    let running = start(ServerConfig { in_flight_max: 1500, ..ServerConfig::default() });
    let mut client = gateway(&running.server, &running.keys);
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let send_batch = |client: &mut Client, first: u64| {
        client
            .send(opcode::BATCH, |out| {
                put_batch_header(out, 1024);
                for index in first..first + 1024 {
                    put_batch_item(out, opcode::RESERVE, |out| wire_booking(index, index as u32, 1).encode(out));
                }
            })
            .unwrap()
    };
    // With the engine stalled nothing is answered: 1,024 commands stay in flight.
    let stall = running.server.engine().log().appender();
    let accepted = send_batch(&mut client, 0);
    let over = send_batch(&mut client, 1024);
    // One more command still fits under 1,500.
    let single = client.send(opcode::RESERVE, |out| wire_booking(5000, 5000, 1).encode(out)).unwrap();
    let (header, body) = client.receive().unwrap();
    let (answer, _) = yeyak::protocol::Answer::decode(&body).unwrap();
    assert_eq!(
        (header.opcode, header.request_id, answer.code, answer.value),
        (opcode::ERROR, over, code::TOO_MANY_IN_FLIGHT, 1500),
        "refused at once, while the engine is stalled, with the limit"
    );
    drop(stall);
    let mut answered = Vec::new();
    for _ in 0..2 {
        let (header, body) = client.receive().unwrap();
        assert_ne!(header.opcode, opcode::ERROR);
        let all_ok = match header.opcode {
            opcode::BATCH => {
                yeyak::protocol::body::split_reply_batch(&body).unwrap().iter().all(|i| body_is_ok(i.body))
            }
            _ => body_is_ok(&body),
        };
        assert!(all_ok, "request {} booked", header.request_id);
        answered.push(header.request_id);
    }
    answered.sort();
    assert_eq!(answered, [accepted, single]);
    // Answered, they no longer count: the refused batch now goes through.
    let again = send_batch(&mut client, 1024);
    let (header, _) = client.receive().unwrap();
    assert_eq!((header.opcode, header.request_id), (opcode::BATCH, again));
    let stats = client.stats().unwrap();
    let by_code = stats.refusals_by_code.iter().find(|(c, _)| *c == code::TOO_MANY_IN_FLIGHT).map(|(_, n)| *n);
    assert_eq!(by_code, Some(1), "{stats:?}");
}

/// Sends one BATCH of `items` (opcode, body) and returns its reply items'
/// bytes, or the answer that refused the batch whole.
fn call_batch(client: &mut Client, items: &[(u8, Vec<u8>)]) -> Result<Vec<(u8, Vec<u8>)>, yeyak::protocol::Answer> {
    use yeyak::protocol::body::{put_batch_header, put_batch_item, split_reply_batch};
    let reply = client.call(opcode::BATCH, |out| {
        put_batch_header(out, items.len() as u16);
        for (item_opcode, item_body) in items {
            put_batch_item(out, *item_opcode, |out| out.extend_from_slice(item_body));
        }
    });
    let (header, body) = match reply {
        Ok(reply) => reply,
        Err(ClientError::Refused(answer)) => return Err(answer),
        Err(other) => panic!("{other}"),
    };
    assert_eq!(header.opcode, opcode::BATCH);
    let items = split_reply_batch(&body).unwrap();
    Ok(items.iter().map(|item| (item.opcode, item.body.to_vec())).collect())
}

/// Sends one BATCH of `items` asking for compact answers and returns them
/// whole (rebuilt from what each item asked).
fn call_compact_batch(client: &mut Client, items: &[(u8, Vec<u8>)]) -> Vec<yeyak::protocol::Answer> {
    use yeyak::protocol::body::{batch_flag, put_batch_header_with, put_batch_item, CompactAnswers};
    let (header, body) = client
        .call(opcode::BATCH, |out| {
            put_batch_header_with(out, items.len() as u16, batch_flag::COMPACT_ANSWERS);
            for (item_opcode, item_body) in items {
                put_batch_item(out, *item_opcode, |out| out.extend_from_slice(item_body));
            }
        })
        .unwrap();
    assert_eq!(header.opcode, opcode::BATCH);
    let asked = items.iter().map(|(item_opcode, body)| yeyak::protocol::body::compact_asked(*item_opcode, body));
    CompactAnswers::parse(&body).unwrap().answers(asked).unwrap()
}

#[test]
fn compact_batch_answers_are_the_full_answers() {
    // Four servers on the same campaign and clock: the same batches (of
    // reservations only, and of every batchable command) asked for answers
    // in full and compact answer alike, answer for answer, and count alike.
    let encoded = |item_opcode: u8, booking: BookingRequest| {
        let mut body = Vec::new();
        booking.encode(&mut body);
        (item_opcode, body)
    };
    let reserves: Vec<(u8, Vec<u8>)> = [
        wire_booking(1, 5, 1),
        wire_booking(1, 5, 1),          // a retry: the first answer
        wire_booking(1, 6, 2),          // already booked: the slot held follows
        wire_booking(2, 99_999_999, 1), // unknown slot: left out
        BookingRequest { birth_date: yeyak::calendar::Date::parse("1940-01-01").unwrap(), ..wire_booking(5, 7, 1) },
        wire_booking(6, 7, 1),
    ]
    .into_iter()
    .map(|booking| encoded(opcode::RESERVE, booking))
    .collect();
    let mut mixed = reserves.clone();
    mixed.push((opcode::GET_RESERVATION, person(1).0.to_le_bytes().to_vec()));
    mixed.push(encoded(opcode::CHANGE, wire_booking(6, 8, 2)));
    mixed.push(encoded(opcode::CHANGE, wire_booking(6, 8, 2)));
    mixed.push(encoded(opcode::CANCEL, wire_booking(1, 0, 3)));
    mixed.push(encoded(opcode::CHANGE, wire_booking(9, 8, 1))); // holds nothing
    for items in [&reserves, &mixed] {
        let (full, compact) = (start(ServerConfig::default()), start(ServerConfig::default()));
        let (mut full_client, mut compact_client) =
            (gateway(&full.server, &full.keys), gateway(&compact.server, &compact.keys));
        let in_full: Vec<yeyak::protocol::Answer> = call_batch(&mut full_client, items)
            .unwrap()
            .iter()
            .map(|(_, body)| yeyak::protocol::Answer::decode(body).unwrap().0)
            .collect();
        assert_eq!(call_compact_batch(&mut compact_client, items), in_full);
        let (full_stats, compact_stats) = (full_client.stats().unwrap(), compact_client.stats().unwrap());
        for name in ["reservations", "changes", "cancellations", "refusals"] {
            assert_eq!(full_stats.counter(name), compact_stats.counter(name), "{name}");
        }
        assert_eq!(full_stats.refusals_by_code, compact_stats.refusals_by_code);
        full.server.shutdown().unwrap();
        compact.server.shutdown().unwrap();
    }
    // The blocking client's batch asks for compact answers: the slot of an
    // answer left out (OK, SLOT_FULL: slot 5 has one seat) is the one asked.
    let running = start(ServerConfig::default());
    let mut client = gateway(&running.server, &running.keys);
    let answers = client.reserve_batch(&[wire_booking(1, 5, 1), wire_booking(2, 5, 1), wire_booking(1, 6, 2)]).unwrap();
    let results: Vec<_> = answers.iter().map(|answer| answer.to_refusal()).collect();
    let slot_full = Refusal::SlotFull { slot: SlotIndex(5) };
    assert_eq!(results, [None, Some(slot_full), Some(Refusal::AlreadyBooked { existing: SlotIndex(5) })]);
    assert_eq!(answers[0], yeyak::protocol::Answer::ok(5));
    running.server.shutdown().unwrap();
}

#[test]
fn a_batch_of_reservations_alone_is_answered_as_the_same_reservations_among_other_commands() {
    // The server applies a batch of RESERVE items only by a loop of its own
    // (`Work::Reserves`), any other batch command by command: two servers on
    // the same campaign and clock, one sent the reservations alone and one
    // the same with a GET_RESERVATION in the middle, answer alike to the byte.
    let encoded = |booking: BookingRequest| {
        let mut body = Vec::new();
        booking.encode(&mut body);
        (opcode::RESERVE, body)
    };
    let bookings = [
        wire_booking(1, 5, 1),
        wire_booking(1, 5, 1), // a retry: the first answer
        wire_booking(1, 6, 2), // already booked
        wire_booking(2, 99_999_999, 1),
        BookingRequest { person: yeyak::state::PersonKey(0), ..wire_booking(3, 7, 1) },
        BookingRequest { idempotency_key: 0, ..wire_booking(4, 7, 1) },
        BookingRequest { birth_date: yeyak::calendar::Date::parse("1940-01-01").unwrap(), ..wire_booking(5, 7, 1) },
        wire_booking(6, 7, 1),
    ];
    let reserves: Vec<(u8, Vec<u8>)> = bookings.iter().map(|booking| encoded(*booking)).collect();
    let get = (opcode::GET_RESERVATION, person(1).0.to_le_bytes().to_vec());
    let mut mixed = reserves.clone();
    mixed.insert(3, get);

    let alone = start(ServerConfig::default());
    let among = start(ServerConfig::default());
    let (mut alone_client, mut among_client) =
        (gateway(&alone.server, &alone.keys), gateway(&among.server, &among.keys));
    let alone_answers = call_batch(&mut alone_client, &reserves).unwrap();
    let mut among_answers = call_batch(&mut among_client, &mixed).unwrap();
    let (get_opcode, get_answer) = among_answers.remove(3);
    let (held, _) = yeyak::protocol::Answer::decode(&get_answer).unwrap();
    assert_eq!((get_opcode, held.held_slot()), (opcode::GET_RESERVATION, Some(SlotIndex(5))));
    assert_eq!(alone_answers, among_answers, "the same answers, byte for byte");
    let codes: Vec<u8> = alone_answers
        .iter()
        .map(|(item_opcode, body)| {
            assert_eq!(*item_opcode, opcode::RESERVE);
            yeyak::protocol::Answer::decode(body).unwrap().0.code
        })
        .collect();
    let expected = [
        ResultCode::Ok,
        ResultCode::Ok,
        Refusal::AlreadyBooked { existing: SlotIndex(5) }.code(),
        Refusal::UnknownSlot { slot: 99_999_999 }.code(),
        Refusal::InvalidPersonKey.code(),
        Refusal::InvalidIdempotencyKey.code(),
        Refusal::NotEligible { birth_date: yeyak::calendar::Date::parse("1940-01-01").unwrap() }.code(),
        ResultCode::Ok,
    ];
    assert_eq!(codes, expected.map(|code| code as u8));
    // Counted alike: three answered OK (a retry counts again, docs/protocol.md)
    // and five refusals.
    let (alone_stats, among_stats) = (alone_client.stats().unwrap(), among_client.stats().unwrap());
    for stats in [&alone_stats, &among_stats] {
        assert_eq!((stats.counter("reservations"), stats.counter("refusals")), (Some(3), Some(5)));
    }
    assert_eq!(alone_stats.refusals_by_code, among_stats.refusals_by_code);
    // A reservation a gateway may not make refuses the whole batch, in either
    // shape, and books nothing of it.
    let as_operator = BookingRequest { channel: Channel::Operator { operator_id: 7 }, ..wire_booking(8, 8, 1) };
    let refused_alone = [encoded(wire_booking(9, 9, 1)), encoded(as_operator)];
    let refused_among = [encoded(wire_booking(9, 9, 1)), mixed[3].clone(), encoded(as_operator)];
    for (client, items) in [(&mut alone_client, &refused_alone[..]), (&mut among_client, &refused_among[..])] {
        assert_eq!(call_batch(client, items).map_err(|answer| answer.code), Err(code::NOT_ALLOWED));
        let query = PersonQuery { person: person(9) };
        assert_eq!(client.reservation(&query).unwrap(), Ok(None), "nothing of the batch booked");
    }
}

fn body_is_ok(body: &[u8]) -> bool {
    yeyak::protocol::Answer::decode(body).is_ok_and(|(answer, _)| answer.is_ok())
}

#[test]
fn the_async_client_batches_concurrent_calls_and_survives_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), ServerConfig::default());
    let address = server.local_address();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (id, key) = keys.first(Role::Gateway).unwrap();
    let key = key.to_vec();
    let client =
        runtime.block_on(yeyak::async_client::AsyncClient::connect(address, Role::Gateway, id, &key, 2)).unwrap();
    let booked = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..2_000u64 {
            let client = client.clone();
            tasks.spawn(async move { client.reserve(&wire_booking(10_000 + index, (index % 5_000) as u32, 1)).await });
        }
        let mut booked = 0;
        while let Some(result) = tasks.join_next().await {
            booked += usize::from(result.unwrap().unwrap().is_ok());
        }
        booked
    });
    assert!(booked > 1_900, "{booked} booked");
    let requests = gateway(&server, &keys).stats().unwrap().counter("requests").unwrap();
    assert!(requests < 1_000, "2,000 concurrent calls went in {requests} frames: batched");
    let first = runtime.block_on(client.reserve(&wire_booking(99, 42, 7))).unwrap();
    assert_eq!(first, Ok(SlotIndex(42)));

    // The engine restarts on the same address; the client reconnects, and a
    // retry of an acknowledged booking gets its first answer.
    server.shutdown().unwrap();
    let rules = yeyak::config::CampaignRules::parse(&small_campaign_toml()).unwrap();
    let (engine, _) = DurableEngine::open(directory.path(), small_log_options(), false).unwrap();
    let clock = Clock::Simulated { start_ms: open_evening_ms(&rules), since: Instant::now() };
    let config = ServerConfig { listen: address, clock, ..ServerConfig::default() };
    let server = Server::start(engine, keys.clone(), config).unwrap();
    let again = runtime.block_on(client.reserve(&wire_booking(99, 42, 7))).unwrap();
    assert_eq!(again, first, "the retry after the restart returns the first answer");
    assert_eq!(
        runtime.block_on(client.reservation(&PersonQuery { person: person(99) })).unwrap(),
        Ok(Some(SlotIndex(42)))
    );
    drop(client);
    drop(runtime);
    server.shutdown().unwrap();
}

#[test]
fn a_peer_that_does_not_complete_the_handshake_is_let_go() {
    let running = start(ServerConfig::default());
    let address = running.server.local_address();
    // A HELLO with a 1 KiB body: before the handshake, bodies over 64 bytes are refused.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut frame = Vec::new();
    yeyak::protocol::encode_frame(&mut frame, opcode::HELLO, 0, 1, |out| out.extend_from_slice(&[0; 1024]));
    std::io::Write::write_all(&mut stream, &frame).unwrap();
    let mut reply = vec![0; 40];
    std::io::Read::read_exact(&mut stream, &mut reply).unwrap();
    assert_eq!((reply[3], reply[24]), (opcode::ERROR, code::FRAME_TOO_LARGE));
    // A peer that says nothing is answered UNAUTHENTICATED and closed after the handshake timeout.
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(address).unwrap();
    let mut reply = vec![0; 40];
    std::io::Read::read_exact(&mut silent, &mut reply).unwrap();
    assert_eq!((reply[3], reply[24]), (opcode::ERROR, code::UNAUTHENTICATED));
    assert!(started.elapsed() >= std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    running.server.shutdown().unwrap();
}

#[test]
fn after_a_disk_failure_reads_are_answered_and_changes_refused() {
    use yeyak::log::faults::FaultPlan;
    use yeyak::protocol::body::{
        batch_flag, put_batch_header, put_batch_header_with, put_batch_item, split_reply_batch,
    };
    use yeyak::protocol::Answer;
    let directory = tempfile::tempdir().unwrap();
    let rules = write_small_campaign(directory.path());
    let plan = FaultPlan::never();
    let engine = open_faulty(directory.path(), &plan);
    let (keys, _) = KeyRing::load(directory.path(), true).unwrap();
    let clock = Clock::Simulated { start_ms: open_evening_ms(&rules), since: Instant::now() };
    let config = ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), clock, ..ServerConfig::default() };
    let server = Server::start(engine, keys.clone(), config).unwrap();
    let mut client = gateway(&server, &keys);
    assert_eq!(client.reserve(&wire_booking(0, 5, 1)).unwrap(), Ok(SlotIndex(5)));

    plan.writes_before_disk_full.store(0, std::sync::atomic::Ordering::SeqCst);
    let log_unavailable = |result: &Result<Result<SlotIndex, Refusal>, ClientError>| match result {
        Err(ClientError::Refused(answer)) => answer.code == ResultCode::LogUnavailable as u8,
        Ok(Err(Refusal::LogUnavailable(_))) => true,
        _ => false,
    };
    let refused = client.reserve(&wire_booking(1, 6, 1));
    assert!(log_unavailable(&refused), "{refused:?}");
    // The client saw the failure: it is broken only by I/O errors, not by refusals.
    let refused = client.cancel(&wire_booking(0, 0, 2));
    assert!(log_unavailable(&refused), "{refused:?}");

    // Reads keep working: one at a time, the site's seats, and a batch of reads.
    assert_eq!(client.reservation(&PersonQuery { person: person(0) }).unwrap(), Ok(Some(SlotIndex(5))));
    let date = yeyak::calendar::Date::parse("2021-08-26").unwrap();
    assert!(client.site_availability(&yeyak::protocol::SiteQuery { site_id: 1, date }).unwrap().is_ok());
    let batch_with_flags = |client: &mut Client, with_reserve: bool, flags: u16| {
        client.call(opcode::BATCH, |out| {
            put_batch_header_with(out, 2 + u16::from(with_reserve), flags);
            put_batch_item(out, opcode::GET_RESERVATION, |out| PersonQuery { person: person(0) }.encode(out));
            put_batch_item(out, opcode::GET_RESERVATION, |out| PersonQuery { person: person(7) }.encode(out));
            if with_reserve {
                put_batch_item(out, opcode::RESERVE, |out| wire_booking(8, 9, 1).encode(out));
            }
        })
    };
    let batch = |client: &mut Client, with_reserve: bool| batch_with_flags(client, with_reserve, 0);
    let (_, body) = batch(&mut client, false).unwrap();
    let answers: Vec<Answer> =
        split_reply_batch(&body).unwrap().iter().map(|item| Answer::decode(item.body).unwrap().0).collect();
    let held: Vec<_> = answers.iter().map(|a| (a.code, a.held_slot())).collect();
    assert_eq!(held, [(0, Some(SlotIndex(5))), (0, None)]);
    // An operator's look at a slot's capacity (zero seats added) is a read too.
    let (operator_id, key) = keys.first(Role::Operator).unwrap();
    let mut operator = Client::connect(server.local_address(), Role::Operator, operator_id, key).unwrap();
    assert!(matches!(operator.capacity(SlotIndex(5)), Ok(Ok(capacity)) if capacity > 0));
    // A batch with a change in it is refused whole, and so is a batch of
    // reservations only (the engine applies it by a loop of its own); an
    // empty batch changes nothing and is answered.
    for flags in [0, batch_flag::COMPACT_ANSWERS] {
        match batch_with_flags(&mut client, true, flags) {
            Err(ClientError::Refused(answer)) => assert_eq!(answer.code, ResultCode::LogUnavailable as u8),
            other => panic!("a batch with a reserve after the failure, flags {flags}: {other:?}"),
        }
    }
    match client.reserve_batch(&[wire_booking(8, 9, 1), wire_booking(9, 9, 1)]) {
        Err(ClientError::Refused(answer)) => assert_eq!(answer.code, ResultCode::LogUnavailable as u8),
        other => panic!("a batch of reservations after the failure: {other:?}"),
    }
    let (_, body) = client.call(opcode::BATCH, |out| put_batch_header(out, 0)).unwrap();
    assert!(split_reply_batch(&body).unwrap().is_empty(), "an empty batch is answered with no items");
    // STATS counts what was answered: one reservation, and LOG_UNAVAILABLE
    // for the reserve and the cancel, and for every command of the three
    // batches (the two mixed ones answered in full and compact, the client's
    // batch of reservations compact).
    let stats = client.stats().unwrap();
    let counted = |name| stats.counter(name).unwrap();
    assert_eq!((counted("reservations"), counted("cancellations"), counted("refusals")), (1, 0, 10), "{stats:?}");
    let log_unavailable = ResultCode::LogUnavailable as u8;
    assert_eq!(stats.refusals_by_code, [(log_unavailable, 10)], "{stats:?}");
    let closed = server.shutdown();
    assert!(matches!(closed, Err(Refusal::LogUnavailable(yeyak::state::LogUnavailable::DiskFull))), "{closed:?}");
}

#[test]
fn a_held_address_answers_starting_until_its_server_takes_over() {
    let address = yeyak::server::BoundAddress::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let local = address.local_address().unwrap();
    // A second engine on the same address is refused at once.
    assert!(yeyak::server::BoundAddress::bind(local).is_err());
    // A connection while the engine starts is told so and closed, not left waiting.
    let early =
        Client::connect_within(local, Role::Gateway, 1, &[7; 32], Duration::from_secs(5), Duration::from_secs(5));
    match early {
        Err(ClientError::Refused(answer)) => assert_eq!(answer.code, code::STARTING),
        other => panic!("a connection during start-up: {:?}", other.map(|_| ())),
    }
    let directory = tempfile::tempdir().unwrap();
    let (engine, keys, config) = open_in(directory.path(), ServerConfig::default());
    let server = Server::start_on(address, engine, keys.clone(), config).unwrap();
    assert_eq!(server.local_address(), local);
    assert_eq!(gateway(&server, &keys).reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)));
    server.shutdown().unwrap();
}

#[test]
fn the_async_client_waits_out_an_engine_restarting_on_its_address() {
    use yeyak::async_client::{AsyncClient, AsyncClientOptions};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let (server, keys) = start_in(directory.path(), ServerConfig::default());
    let address = server.local_address();
    let (id, key) = keys.first(Role::Gateway).unwrap();
    let options = AsyncClientOptions { attempts_max: 10, ..AsyncClientOptions::default() };
    let client = runtime.block_on(AsyncClient::connect_with(address, Role::Gateway, id, key, options)).unwrap();
    assert_eq!(runtime.block_on(client.reserve(&wire_booking(1, 5, 1))).unwrap(), Ok(SlotIndex(5)));
    server.shutdown().unwrap();
    // The restart holds the address at once and answers STARTING while it recovers.
    let held = yeyak::server::BoundAddress::bind(address).unwrap();
    let data = directory.path().to_path_buf();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let (engine, keys, config) = open_in(&data, ServerConfig::default());
        Server::start_on(held, engine, keys, config).unwrap()
    });
    // Refused STARTING, then retried with backoff until the engine serves.
    assert_eq!(runtime.block_on(client.reserve(&wire_booking(2, 6, 1))).unwrap(), Ok(SlotIndex(6)));
    let server = restarter.join().unwrap();
    assert_eq!(server.engine().reservation_of(person(1)), Ok(Some(SlotIndex(5))), "kept over the restart");
    server.shutdown().unwrap();
}

#[test]
fn a_frame_begun_and_not_finished_is_refused_in_time_while_an_idle_connection_stays() {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(300);
    let running = start(ServerConfig { frame_completion_timeout: timeout, ..ServerConfig::default() });
    let (id, key) = running.keys.first(Role::Gateway).unwrap();
    let connect = || Client::connect(running.server.local_address(), Role::Gateway, id, key).unwrap();
    let mut idle = connect();
    // Half a RESERVE frame, then nothing.
    let mut stalled = connect().into_stream().unwrap();
    let mut frame = Vec::new();
    yeyak::protocol::encode_frame(&mut frame, opcode::RESERVE, 0, 5, |out| wire_booking(1, 1, 1).encode(out));
    stalled.write_all(&frame[..frame.len() / 2]).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let began = Instant::now();
    let mut reply = Vec::new();
    stalled.read_to_end(&mut reply).unwrap();
    assert!(began.elapsed() >= timeout / 2, "refused before its time: {:?}", began.elapsed());
    let (header, body) = yeyak::protocol::decode_frame(&reply, 64).unwrap();
    assert_eq!((header.opcode, header.request_id, body[0]), (opcode::ERROR, 0, code::MALFORMED));
    // The idle connection, which began no frame, waited as long and still books.
    std::thread::sleep(timeout);
    assert_eq!(idle.reserve(&wire_booking(2, 2, 1)).unwrap(), Ok(SlotIndex(2)));
    // A peer that trickles its frame a byte at a time, each byte well within
    // the timeout, is refused once the frame has taken the timeout in all.
    let mut trickling = connect().into_stream().unwrap();
    trickling.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let began = Instant::now();
    let mut reply = Vec::new();
    for byte in &frame[..frame.len() - 1] {
        if trickling.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        let mut chunk = [0u8; 64];
        if let Ok(read) = trickling.read(&mut chunk) {
            reply.extend_from_slice(&chunk[..read]);
            break;
        }
    }
    assert!(began.elapsed() < timeout * 4, "a trickled frame held its connection {:?}", began.elapsed());
    let (header, body) = yeyak::protocol::decode_frame(&reply, 64).unwrap();
    assert_eq!((header.opcode, header.request_id, body[0]), (opcode::ERROR, 0, code::MALFORMED));
    running.server.shutdown().unwrap();
}

#[test]
fn a_connection_refused_too_many_in_flight_is_not_read_until_a_request_is_answered() {
    use yeyak::protocol::body::{put_batch_header, put_batch_item};
    let running = start(ServerConfig { in_flight_max: 1024, ..ServerConfig::default() });
    let mut client = gateway(&running.server, &running.keys);
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut other = gateway(&running.server, &running.keys);
    // The engine stalled: a full batch stays in flight.
    let stall = running.server.engine().log().appender();
    let batch = client
        .send(opcode::BATCH, |out| {
            put_batch_header(out, 1024);
            for index in 0..1024 {
                put_batch_item(out, opcode::RESERVE, |out| wire_booking(index, index as u32, 1).encode(out));
            }
        })
        .unwrap();
    let singles: Vec<u64> = (0..3)
        .map(|index| client.send(opcode::RESERVE, |out| wire_booking(5000 + index, 5000, 1).encode(out)).unwrap())
        .collect();
    client.flush().unwrap();
    let (header, body) = client.receive().unwrap();
    let answer = yeyak::protocol::Answer::decode(&body).unwrap().0;
    assert_eq!((header.request_id, answer.code), (singles[0], code::TOO_MANY_IN_FLIGHT), "the first one over");
    // Told once: the two after it are not read while the batch is in flight
    // (read so far: the batch, the refused single, and this STATS).
    std::thread::sleep(Duration::from_millis(200));
    let stats = other.stats().unwrap();
    assert_eq!(stats.counter("requests"), Some(3), "{stats:?}");
    drop(stall);
    // Once the batch is answered, they are read and served.
    let mut answered: Vec<u64> = (0..3).map(|_| client.receive().unwrap().0.request_id).collect();
    answered.sort();
    assert_eq!(answered, [batch, singles[1], singles[2]]);
    let refused =
        other.stats().unwrap().refusals_by_code.iter().find(|(c, _)| *c == code::TOO_MANY_IN_FLIGHT).map(|(_, n)| *n);
    assert_eq!(refused, Some(1), "one refusal, not one a frame");
    running.server.shutdown().unwrap();
}

#[test]
fn peers_that_do_not_read_are_paused_once_all_replies_waiting_pass_the_budget() {
    use std::io::Write;
    use yeyak::protocol::encode_frame;
    const PEERS: usize = 4;
    const QUERIES: usize = 80_000;
    let reply_bytes_max = 1 << 20;
    let in_flight_max = 256;
    let running = start(ServerConfig { reply_bytes_max, in_flight_max, ..ServerConfig::default() });
    // Each peer sends its SITE queries (about 120 reply bytes each: more than
    // the kernel's socket buffers take) and never reads a reply.
    let date = yeyak::calendar::Date::parse("2021-08-26").unwrap();
    let mut frames = Vec::new();
    for index in 0..QUERIES {
        let query = yeyak::protocol::SiteQuery { site_id: 1, date };
        encode_frame(&mut frames, opcode::SITE_AVAILABILITY, 0, 10 + index as u64, |out| query.encode(out));
    }
    let frames = std::sync::Arc::new(frames);
    let peers: Vec<std::net::TcpStream> = (0..PEERS)
        .map(|_| {
            let stream = gateway(&running.server, &running.keys).into_stream().unwrap();
            stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            stream
        })
        .collect();
    let senders: Vec<_> = peers
        .iter()
        .map(|peer| {
            let (mut peer, frames) = (peer.try_clone().unwrap(), std::sync::Arc::clone(&frames));
            // Blocks once the engine stops reading it; the timeout ends it.
            std::thread::spawn(move || {
                let _ = peer.write_all(&frames);
            })
        })
        .collect();
    let mut client = gateway(&running.server, &running.keys);
    let waiting = |client: &mut Client| client.stats().unwrap().counter("reply bytes waiting").unwrap();
    // Waits until the bytes waiting stop growing (the peers are paused).
    let (mut most, mut last, mut still) = (0, u64::MAX, 0);
    while still < 10 {
        std::thread::sleep(Duration::from_millis(50));
        let now = waiting(&mut client);
        most = most.max(now);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    // Reached the budget (so the pause is what holds it), and held near it:
    // past it, each connection finishes at most its share and the replies
    // of requests it had in flight. Without the budget each would hold 4 MiB.
    let per_peer = yeyak::server::REPLY_BYTES_SHARE as u64 + u64::from(in_flight_max) * 150 + (64 << 10);
    assert!(most >= reply_bytes_max as u64, "{most} bytes waiting: the budget was never reached");
    assert!(most <= reply_bytes_max as u64 + PEERS as u64 * per_peer, "{most} bytes waiting");
    // A client that reads its replies is served meanwhile.
    assert_eq!(client.reserve(&wire_booking(1, 5, 1)).unwrap(), Ok(SlotIndex(5)));
    // The peers go: what waited for them is let go.
    for peer in &peers {
        peer.shutdown(std::net::Shutdown::Both).unwrap();
    }
    drop(peers);
    for sender in senders {
        sender.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting(&mut client) > 0 {
        assert!(Instant::now() < deadline, "{} bytes still waiting for peers that are gone", waiting(&mut client));
        std::thread::sleep(Duration::from_millis(20));
    }
    running.server.shutdown().unwrap();
}
