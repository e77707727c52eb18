//! Panics as failures, not crashes: the one process-wide panic hook and the
//! one way code catches a panic.
//!
//! Owns [`install_hook`] (a panic is logged as one line, never a backtrace
//! dump) and [`catch`], [`catch_quietly`] and [`catch_future`], which turn a
//! panic into an `Err` carrying its message.
//!
//! Invariant: no panic payload reaches the user as a Rust debug dump. A panic
//! caught with [`catch_quietly`] (a library asserting on a corrupt file, say)
//! prints nothing, because the caller reports it as an error of its own;
//! every other panic is logged once through `tracing` (or as one line on
//! stderr before logging is set up).

use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// How many [`catch_quietly`] calls are running on this thread.
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// Replaces the default panic hook (which prints a backtrace when
/// `RUST_BACKTRACE` is set) by one that logs a single line with the panic's
/// message and location. Idempotent.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if QUIET.with(Cell::get) > 0 {
                return;
            }
            let message = message(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "an unknown place".to_string());
            let thread = std::thread::current();
            let thread = thread.name().unwrap_or("unnamed");
            if tracing::dispatcher::has_been_set() {
                tracing::error!(%location, thread, panic = %message, "internal error (a panic); the failed work is retried or reported");
            } else {
                eprintln!("wxtoken: internal error at {location}: {message}");
            }
        }));
    });
}

/// The text of a panic payload (`&str` or `String` payloads; else a placeholder).
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `f`, turning a panic into `Err(message)`. The panic is logged by the hook.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(&*payload))
}

/// Runs `f`, turning a panic into `Err(message)` without logging it: for
/// callers that report the failure themselves as one sentence.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    QUIET.with(|q| q.set(q.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| message(&*payload))
}

/// Awaits `future`, turning a panic while it is polled into `Err(message)`
/// (logged by the hook) instead of unwinding into the executor.
pub async fn catch_future<F: Future>(future: F) -> Result<F::Output, String> {
    use futures::FutureExt;
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| message(&*payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_becomes_its_message() {
        install_hook();
        assert_eq!(catch(|| 1), Ok(1));
        assert_eq!(
            catch_quietly(|| -> () { panic!("boom") }),
            Err("boom".into())
        );
        let n = 7;
        assert_eq!(catch(|| -> () { panic!("n is {n}") }), Err("n is 7".into()));
    }

    #[tokio::test]
    async fn a_panicking_future_answers_an_error() {
        install_hook();
        assert_eq!(catch_future(async { 5 }).await, Ok(5));
        let failed = catch_future(async {
            tokio::task::yield_now().await;
            panic!("late boom")
        })
        .await;
        assert_eq!(failed, Err::<(), _>("late boom".into()));
    }
}
