//! The WebAssembly interface: exported functions and the glue's imports.
//!
//! Data crosses through two buffers. The glue asks for an inbox of `len` bytes
//! ([`am_inbox`]), writes a command (JSON) or socket bytes into it, and calls; the answer
//! (JSON, or bytes to send) is left in the outbox ([`am_outbox`], [`am_outbox_len`]). A call
//! copies its input out of the inbox before it runs and writes the outbox only when it is done,
//! so a handler that calls back in (from inside a transition) does not disturb its caller.
//!
//! Imports (module `am`): `notify(kind) -> u32` with a JSON payload in the outbox, read by the
//! glue before it does anything else: a handler to run (1; the answer is 0 to go on, 1 to
//! cancel, 2 for an error whose message the glue wrote into the inbox), a change (2), a wake-up
//! (3: poll and flush soon), a panic's message (4). `now_us() -> f64`: wall time in
//! microseconds since the Unix epoch, for telemetry records.
//!
//! The only unsafe code of the crate: the exports' symbol names and the import's declaration.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;

use serde_json::{Value as Json, json};

use crate::error::WebError;
use crate::page::{Host, Page};

#[link(wasm_import_module = "am")]
unsafe extern "C" {
    safe fn notify(kind: u32) -> u32;
    /// Wall time in microseconds since the Unix epoch (a whole number as a double).
    safe fn now_us() -> f64;
}

const NOTE_HANDLER: u32 = 1;
const NOTE_CHANGED: u32 = 2;
const NOTE_WAKE: u32 = 3;
const NOTE_PANIC: u32 = 4;

thread_local! {
    static INBOX: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTBOX: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static PAGE: Page = Page::new(Arc::new(Glue));
}

/// The glue, as the page's host.
#[derive(Debug)]
struct Glue;

fn put_outbox(bytes: Vec<u8>) {
    OUTBOX.with(|out| *out.borrow_mut() = bytes);
}

fn take_inbox() -> Vec<u8> {
    INBOX.with(|inbox| std::mem::take(&mut *inbox.borrow_mut()))
}

impl Host for Glue {
    fn handler(&self, func: u32, event: &Json) -> Result<bool, String> {
        put_outbox(
            json!({ "fn": func, "event": event })
                .to_string()
                .into_bytes(),
        );
        match notify(NOTE_HANDLER) {
            0 => Ok(true),
            1 => Ok(false),
            _ => Err(String::from_utf8_lossy(&take_inbox()).into_owned()),
        }
    }

    fn changed(&self, note: &Json) {
        put_outbox(note.to_string().into_bytes());
        notify(NOTE_CHANGED);
    }

    fn wake(&self) {
        notify(NOTE_WAKE);
    }

    fn now_us(&self) -> u64 {
        now_us().max(0.0) as u64
    }
}

/// Sends panics to the glue (the module traps after it: `panic = "abort"`).
#[unsafe(no_mangle)]
pub extern "C" fn am_init() {
    std::panic::set_hook(Box::new(|info| {
        put_outbox(info.to_string().into_bytes());
        notify(NOTE_PANIC);
    }));
}

/// An inbox of `len` bytes for the glue to write into.
#[unsafe(no_mangle)]
pub extern "C" fn am_inbox(len: usize) -> *mut u8 {
    INBOX.with(|inbox| {
        let mut inbox = inbox.borrow_mut();
        inbox.clear();
        inbox.resize(len, 0);
        inbox.as_mut_ptr()
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn am_outbox() -> *const u8 {
    OUTBOX.with(|out| out.borrow().as_ptr())
}

#[unsafe(no_mangle)]
pub extern "C" fn am_outbox_len() -> usize {
    OUTBOX.with(|out| out.borrow().len())
}

fn answer(result: Result<Json, WebError>) -> u32 {
    let (status, json) = match result {
        Ok(json) => (0, json),
        Err(e) => (1, e.to_json()),
    };
    put_outbox(json.to_string().into_bytes());
    status
}

/// Runs the JSON command in the inbox; 0 and its answer, or 1 and an error, in the outbox.
#[unsafe(no_mangle)]
pub extern "C" fn am_call() -> u32 {
    let input = take_inbox();
    let result = serde_json::from_slice::<Json>(&input)
        .map_err(|e| WebError::bad_request(format!("the command is not JSON: {e}")))
        .and_then(|command| PAGE.with(|page| page.call(&command)));
    answer(result)
}

/// Bytes from mirror `handle`'s WebSocket (in the inbox), read at `now_ms`.
#[unsafe(no_mangle)]
pub extern "C" fn am_bytes(handle: u32, now_ms: f64) -> u32 {
    let input = take_inbox();
    answer(PAGE.with(|page| page.bytes(handle, &input, now_ms)))
}

/// What mirror `handle` has to send, into the outbox; its length.
#[unsafe(no_mangle)]
pub extern "C" fn am_take(handle: u32) -> usize {
    let bytes = PAGE.with(|page| page.take(handle));
    let len = bytes.len();
    put_outbox(bytes);
    len
}

/// Bytes from connection `conn` of served machine `server` (in the inbox), read at `now_ms`.
#[unsafe(no_mangle)]
pub extern "C" fn am_server_bytes(server: u32, conn: u32, now_ms: f64) -> u32 {
    let input = take_inbox();
    answer(PAGE.with(|page| page.server_bytes(server, conn, &input, now_ms)))
}

/// What connection `conn` of served machine `server` has to send, into the outbox; its length.
#[unsafe(no_mangle)]
pub extern "C" fn am_server_take(server: u32, conn: u32) -> usize {
    let bytes = PAGE.with(|page| page.server_take(server, conn));
    let len = bytes.len();
    put_outbox(bytes);
    len
}
