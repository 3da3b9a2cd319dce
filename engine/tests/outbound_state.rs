//! An outbound connection's state comes with it (`ServerHandle::connect_with_state`): the
//! callbacks see it from `on_open` on and `on_close` hands it back; a state of another type
//! than the handler's is refused before anything is connected.

mod common;

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use percore::{Backend, CloseCode, Conn, ConnId, Decision, Handler, Message, Reject, Request};
use percore::{ServerHandle, Upgrade};

/// Says its state on open, reports the echo and closes; reports the state `on_close` gets.
struct Caller {
    seen: Sender<String>,
}

impl Handler for Caller {
    type State = String;

    /// Its listener still takes connections: with a `String` state, it must say what to do.
    fn on_upgrade(&mut self, _: &Request, up: Upgrade<String>) -> Decision<String> {
        up.reject(Reject::new(404, "outbound only"))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let text = format!("I am {}", conn.state());
        conn.send_text(&text).unwrap();
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            let _ = self.seen.send(format!("{} got {t:?}", conn.state()));
        }
        conn.close(CloseCode::NORMAL, "");
    }

    fn on_close(&mut self, state: String, _: ConnId, _: Option<CloseCode>, _: &str) {
        let _ = self.seen.send(format!("closed {state}"));
    }
}

fn caller(backend: Backend) -> (ServerHandle, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = common::start_app(
        backend,
        |b| b,
        move |_| Caller {
            seen: tx.lock().unwrap().clone(),
        },
    );
    (server, rx)
}

every_backend! {
    fn outbound_connection_starts_with_the_state_given_to_connect_with_state(backend) {
        let echo = common::start(backend);
        let (client, seen) = caller(backend);
        let target = common::connect_target(echo.addr);
        client.connect_with_state(1, target, "alice".to_owned()).unwrap();
        let next = || seen.recv_timeout(common::WAIT).expect("an event");
        assert_eq!(next(), "alice got \"I am alice\"");
        assert_eq!(next(), "closed alice");
    }

    fn connect_with_a_state_of_another_type_is_invalid_input(backend) {
        let echo = common::start(backend);
        let (client, _seen) = caller(backend);
        let err = client.connect(0, common::connect_target(echo.addr)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("String"), "{err}");
        let err = client.connect_with_state(0, common::connect_target(echo.addr), 7u32).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(echo.handle().stats().accepted, 0, "nothing was connected");
    }
}
