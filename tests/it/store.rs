//! The token store against real redb files in temporary directories: round
//! trips, durability across a reopen and a simulated crash, refusal of corrupt
//! files, skipping of undecodable records, and the ordered writer.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};
use wxtoken::domain::{AccessToken, AppId, Mode};
use wxtoken::metrics::Metrics;
use wxtoken::store::{
    MemoryStore, RedbStore, Storage, StoreError, StoreWriter, StoredAccount, StoredToken,
    move_aside,
};

use crate::support::metric_value;
use crate::support::stores::{Disk, PanickingStore};
use crate::support::wait::Wait;

/// The table the store module documents as its layout.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

fn appid(s: &str) -> AppId {
    AppId::parse(s).expect("test appid is valid")
}

fn legacy_with_token(id: &str, token: &str) -> StoredAccount {
    StoredAccount {
        appid: appid(id),
        mode: Mode::Legacy,
        token: Some(StoredToken {
            token: AccessToken::new(token),
            fetched_at_ms: 1_750_000_000_000,
            expires_at_ms: 1_750_007_200_000,
            serve_until_ms: 1_750_006_900_000,
        }),
        pending_fetch_ms: Some(1_750_006_000_000),
        calls_day: 20_254,
        calls_today: 7,
        forces: vec![],
        tickets: Vec::new(),
        open: None,
    }
}

fn stable_without_token(id: &str) -> StoredAccount {
    StoredAccount {
        appid: appid(id),
        mode: Mode::Stable,
        token: None,
        pending_fetch_ms: None,
        calls_day: 20_254,
        calls_today: 2,
        forces: vec![1_750_000_100_000, 1_750_000_200_000],
        tickets: Vec::new(),
        open: None,
    }
}

fn with_calls(mut account: StoredAccount, calls: u32) -> StoredAccount {
    account.calls_today = calls;
    account
}

/// A store file path in a new temporary directory (removed on drop).
fn store_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    (dir, path)
}

/// The raw value stored under `key`, read with redb directly.
fn raw_record(path: &Path, key: &str) -> Option<Vec<u8>> {
    let db = Database::open(path).expect("the store file opens with redb");
    let txn = db.begin_read().expect("read transaction");
    let table = txn.open_table(ACCOUNTS).expect("the accounts table exists");
    table.get(key).expect("read").map(|v| v.value().to_vec())
}

#[test]
fn accounts_round_trip_and_survive_a_reopen() {
    let (_dir, path) = store_file();
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    let c = legacy_with_token("wx3333333333333333", "TOKEN-C");

    let store = RedbStore::open(&path).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    for account in [&c, &a, &b] {
        store.put(account).unwrap();
    }
    assert_eq!(
        store.load_all().unwrap(),
        vec![a.clone(), b.clone(), c.clone()]
    );
    drop(store);

    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(reopened.load_all().unwrap(), vec![a, b, c]);
}

#[test]
fn put_replaces_and_remove_removes_durably() {
    let (_dir, path) = store_file();
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");

    let store = RedbStore::open(&path).unwrap();
    store.put(&a).unwrap();
    store.put(&b).unwrap();
    let mut a2 = with_calls(a.clone(), 8);
    a2.pending_fetch_ms = None;
    a2.token = None;
    store.put(&a2).unwrap();
    store.remove(&b.appid).unwrap();
    store.remove(&b.appid).unwrap();
    store.remove(&appid("wx9999999999999999")).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![a2.clone()]);
    drop(store);

    assert_eq!(
        RedbStore::open(&path).unwrap().load_all().unwrap(),
        vec![a2]
    );
}

#[test]
fn a_store_in_a_missing_nested_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/wxtoken/wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&stable_without_token("wx1111111111111111"))
        .unwrap();
    assert!(path.is_file());
    assert_eq!(store.kind(), "redb");
    assert_eq!(store.describe(), format!("redb store {}", path.display()));
}

#[cfg(unix)]
#[test]
fn a_directory_that_cannot_be_created_is_an_open_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: create_dir_all fails for any user, root included.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("wxtoken.redb");
    let err = RedbStore::open(&path).err().expect("open fails");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// Asserts that opening `path` is refused as corrupt with a helpful message
/// and that the file is left exactly as it was.
fn assert_refused_as_corrupt(path: &Path) {
    let before = std::fs::read(path).unwrap();
    let err = RedbStore::open(path)
        .err()
        .expect("a corrupt file is refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("unreadable or corrupt"), "{text}");
    assert!(text.contains("--reset-store"), "{text}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the refused file was modified"
    );
}

#[test]
fn a_text_file_is_refused_as_corrupt_and_left_in_place() {
    let (_dir, path) = store_file();
    std::fs::write(&path, "accounts:\n  - appid: wx1111111111111111\n").unwrap();
    assert_refused_as_corrupt(&path);
}

#[test]
fn random_bytes_are_refused_as_corrupt_and_left_in_place() {
    let (_dir, path) = store_file();
    let bytes: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, bytes).unwrap();
    assert_refused_as_corrupt(&path);
}

#[test]
fn a_truncated_store_is_refused_as_corrupt_and_left_in_place() {
    let (_dir, path) = store_file();
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .unwrap();
    drop(store);
    let full = std::fs::read(&path).unwrap();
    for len in [full.len() / 2, 700, 20] {
        std::fs::write(&path, &full[..len]).unwrap();
        assert_refused_as_corrupt(&path);
    }
}

#[test]
fn a_redb_file_of_another_program_is_refused_as_corrupt() {
    let (_dir, path) = store_file();
    {
        let foreign: TableDefinition<u64, u64> = TableDefinition::new("accounts");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(foreign).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path)
        .err()
        .expect("a foreign file is refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("--reset-store"), "{err}");
}

#[test]
fn a_store_open_twice_is_reported_as_locked() {
    let (_dir, path) = store_file();
    let _first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).err().expect("second open fails");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn an_undecodable_record_is_skipped_and_kept_in_the_file() {
    let (_dir, path) = store_file();
    let good = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let store = RedbStore::open(&path).unwrap();
    store.put(&good).unwrap();
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ACCOUNTS).unwrap();
            table
                .insert("wx2222222222222222", &b"\x00\xffnot json"[..])
                .unwrap();
            table
                .insert("wx3333333333333333", &br#"{"v":99,"future":true}"#[..])
                .unwrap();
            table.insert("not/an/appid", &br#"{"v":1}"#[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![good]);
    drop(store);

    assert_eq!(
        raw_record(&path, "wx2222222222222222").as_deref(),
        Some(&b"\x00\xffnot json"[..])
    );
    assert!(raw_record(&path, "wx3333333333333333").is_some());
    assert!(raw_record(&path, "not/an/appid").is_some());
}

#[test]
fn records_are_versioned_json_keyed_by_appid() {
    let (_dir, path) = store_file();
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&stable_without_token("wx1111111111111111"))
        .unwrap();
    drop(store);
    let raw = raw_record(&path, "wx1111111111111111").expect("record stored under its appid");
    let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(value["v"], 1);
    assert_eq!(value["mode"], "stable");
}

#[test]
fn move_aside_renames_the_store_and_frees_the_path() {
    let (dir, path) = store_file();
    std::fs::write(&path, "garbage").unwrap();
    let moved = move_aside(&path).unwrap();
    assert!(!path.exists());
    assert_eq!(std::fs::read(&moved).unwrap(), b"garbage");
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("wxtoken.redb.broken-"), "{name}");
    assert_eq!(moved.parent(), path.parent());

    let store = RedbStore::open(&path).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    assert!(move_aside(&dir.path().join("absent.redb")).is_err());
}

#[tokio::test]
async fn writer_applies_queued_writes_in_order_so_the_last_one_wins() {
    let store = Arc::new(MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    assert_eq!(writer.kind(), "memory");
    let a = stable_without_token("wx1111111111111111");
    let b = legacy_with_token("wx2222222222222222", "TOKEN-B");
    for calls in 0..200 {
        writer.put_later(with_calls(a.clone(), calls));
        writer.put_later(with_calls(b.clone(), calls));
    }
    writer.remove_later(b.appid.clone());
    writer.put_later(with_calls(b.clone(), 1_000));
    writer.remove_later(a.appid.clone());
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(b, 1_000)]);
}

#[tokio::test]
async fn writer_put_resolves_only_after_the_write_is_durable() {
    let (dir, path) = store_file();
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    for calls in 0..20 {
        writer.put_later(with_calls(a.clone(), calls));
    }
    writer.put(with_calls(a.clone(), 20)).await.unwrap();

    // Copying the file while the store is open is what a crash leaves behind
    // (kill -9, power loss): the copy must hold every acknowledged write.
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    let recovered = RedbStore::open(&crashed).unwrap();
    assert_eq!(recovered.load_all().unwrap(), vec![with_calls(a, 20)]);
}

#[tokio::test]
async fn writer_flush_orders_writes_to_a_redb_file() {
    let (_dir, path) = store_file();
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = stable_without_token("wx1111111111111111");
    let b = stable_without_token("wx2222222222222222");
    for calls in 0..50 {
        writer.clone().put_later(with_calls(a.clone(), calls));
    }
    writer.put_later(b.clone());
    writer.remove_later(b.appid.clone());
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(a, 49)]);
}

fn write_errors(metrics: &Metrics, store: &str) -> f64 {
    metric_value(
        &metrics.encode(),
        "wxtoken_store_write_errors_total",
        &[("store", store)],
    )
}

#[tokio::test]
async fn a_failed_write_is_returned_and_counted() {
    let metrics = Metrics::new();
    let writer = StoreWriter::start(Arc::new(Disk::full("failing")), metrics.clone());
    let err = writer
        .put(legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Write { .. }), "{err:?}");
    assert!(!err.to_string().contains("TOKEN-A"), "{err}");
    assert_eq!(write_errors(&metrics, "failing"), 1.0);

    writer.put_later(stable_without_token("wx2222222222222222"));
    writer.remove_later(appid("wx3333333333333333"));
    writer.flush().await;
    assert_eq!(write_errors(&metrics, "failing"), 3.0);
}

#[tokio::test]
async fn a_panicking_store_gives_errors_and_the_writer_keeps_going() {
    let metrics = Metrics::new();
    let writer = StoreWriter::start(Arc::new(PanickingStore), metrics.clone());
    let account = stable_without_token("wx1111111111111111");
    assert!(writer.put(account.clone()).await.is_err());
    assert!(writer.put(account).await.is_err());
    assert_eq!(write_errors(&metrics, "panicking"), 2.0);
}

#[actix_web::test]
async fn the_writer_works_inside_an_actix_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("wxtoken.redb")).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    writer.put(a.clone()).await.unwrap();
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![a]);
}

#[tokio::test(start_paused = true)]
async fn the_writer_works_under_a_paused_clock() {
    let store = Arc::new(MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = stable_without_token("wx1111111111111111");
    writer.put(a.clone()).await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(3600)).await;
    writer.put_later(with_calls(a.clone(), 9));
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(a, 9)]);
}

// ------------------------------------------------------------ failed writes recover

/// How long a writer may take to get its dirty accounts onto a disk with room.
const RECOVERY: Wait = Wait::up_to(std::time::Duration::from_secs(15));

fn store_up(metrics: &Metrics, store: &str) -> f64 {
    metric_value(&metrics.encode(), "wxtoken_store_up", &[("store", store)])
}

#[tokio::test]
async fn failed_writes_are_retried_in_the_background_until_durable() {
    let disk = Arc::new(Disk::default());
    let metrics = Metrics::new();
    let writer = StoreWriter::start(disk.clone(), metrics.clone());
    assert_eq!(writer.failing(), None);
    assert_eq!(store_up(&metrics, "disk"), 1.0);

    disk.set_full(true);
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    // An awaited put still answers at once, with the error of its first attempt.
    let err = writer.put(a.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Write { .. }), "{err:?}");
    writer.put_later(b.clone());
    writer.put_later(with_calls(a.clone(), 8));
    writer.flush().await;
    let reason = writer
        .failing()
        .expect("the store reports that it is failing");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(!reason.contains("TOKEN-A"), "{reason}");
    assert_eq!(store_up(&metrics, "disk"), 0.0);
    assert!(write_errors(&metrics, "disk") >= 3.0);

    // Space returns: with no new write at all, the writer gets everything
    // acknowledged to memory onto the disk, the newest state of each account.
    disk.set_full(false);
    RECOVERY
        .until("every dirty account is written", || {
            writer.failing().is_none()
        })
        .await;
    assert_eq!(disk.load_all().unwrap(), vec![with_calls(a, 8), b.clone()]);
    assert_eq!(store_up(&metrics, "disk"), 1.0);
}

#[tokio::test]
async fn a_later_successful_write_of_another_account_does_not_forget_a_dirty_one() {
    let disk = Arc::new(Disk::default());
    let metrics = Metrics::new();
    let writer = StoreWriter::start(disk.clone(), metrics.clone());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    disk.refuse(&[&a.appid]);
    assert!(writer.put(a.clone()).await.is_err());
    writer.put(b.clone()).await.unwrap();
    writer.put(with_calls(b.clone(), 3)).await.unwrap();
    writer.flush().await;
    let reason = writer.failing().expect("a is still not written");
    assert!(reason.contains("wx1111111111111111"), "{reason}");
    assert_eq!(store_up(&metrics, "disk"), 0.0);
    assert_eq!(disk.load_all().unwrap(), vec![with_calls(b.clone(), 3)]);

    disk.refuse(&[]);
    // A flush tries the dirty ones once more, whatever the backoff.
    writer.flush().await;
    assert_eq!(writer.failing(), None);
    assert_eq!(disk.load_all().unwrap(), vec![a, with_calls(b, 3)]);
    assert_eq!(store_up(&metrics, "disk"), 1.0);
}

#[tokio::test]
async fn a_removed_account_is_never_resurrected_by_a_retry() {
    let disk = Arc::new(Disk::default());
    let writer = StoreWriter::start(disk.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    writer.put(b.clone()).await.unwrap();

    // The removal fails too: it is the newest state of `a`, and what is retried.
    disk.set_full(true);
    assert!(writer.put(a.clone()).await.is_err());
    writer.remove_later(a.appid.clone());
    writer.remove_later(b.appid.clone());
    writer.flush().await;
    assert!(writer.failing().is_some());
    disk.set_full(false);
    writer.flush().await;
    assert_eq!(writer.failing(), None);
    assert!(disk.load_all().unwrap().is_empty());

    // The removal succeeds at once: the failed put before it is not retried.
    disk.refuse(&[&a.appid]);
    assert!(writer.put(a.clone()).await.is_err());
    disk.refuse(&[]);
    writer.remove_later(a.appid.clone());
    writer.flush().await;
    assert_eq!(writer.failing(), None);
    writer.flush().await;
    assert!(disk.load_all().unwrap().is_empty());
}

#[tokio::test]
async fn close_writes_the_dirty_accounts_once_more() {
    let disk = Arc::new(Disk::default());
    let writer = StoreWriter::start(disk.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    disk.refuse(&[&a.appid, &b.appid]);
    assert!(writer.put(a.clone()).await.is_err());
    assert!(writer.put(b.clone()).await.is_err());
    disk.refuse(&[&b.appid]);
    writer.close().await;
    // `a` made it at shutdown; `b` could not be written (and is logged).
    assert_eq!(disk.load_all().unwrap(), vec![a]);
    assert!(writer.failing().is_some());
}

/// A tmpfs mounted on a temporary directory (we run as root in the test
/// sandbox; `mount` refuses otherwise), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    /// Grows (or shrinks) the mounted tmpfs to `size`: space returns.
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount to {size} failed");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_recovers_without_a_restart_and_the_file_holds_the_newest_state() {
    let tmpfs = match Tmpfs::mount("4m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!(
                "!!!!!!!! SKIPPED a_full_disk_recovers_without_a_restart_and_the_file_holds_the_newest_state: \
                 cannot mount a tmpfs ({why}); this test needs root. The dirty-retry logic is still \
                 covered by the tests with the `Disk` double. !!!!!!!!"
            );
            return;
        }
    };
    let path = tmpfs.path().join("data").join("wxtoken.redb");
    let metrics = Metrics::new();
    let writer = StoreWriter::start(Arc::new(RedbStore::open(&path).unwrap()), metrics.clone());
    // Large tokens so that a few dozen accounts fill 4 MiB.
    let big = |i: u32| {
        let mut account = legacy_with_token(
            &format!("wx{i:016}"),
            &format!("{i}-{}", "T".repeat(100_000)),
        );
        account.calls_today = i;
        account
    };
    let mut newest = std::collections::BTreeMap::new();
    let mut first_error = None;
    for i in 1..=60 {
        let account = big(i);
        newest.insert(account.appid.clone(), account.clone());
        if let Err(e) = writer.put(account).await {
            first_error = Some(e);
            break;
        }
    }
    let first_error = first_error.expect("the 4 MiB disk fills up");
    assert!(
        first_error.to_string().contains("No space left on device"),
        "{first_error}"
    );
    let failed_at = newest.len() as u32;
    assert!(failed_at > 2, "the disk was full from the start");
    assert!(writer.failing().is_some());
    assert_eq!(store_up(&metrics, "redb"), 0.0);

    // While the disk is full: more accepted state (an update, a new account,
    // a removal), all of which must end up in the file.
    let updated = with_calls(big(1), 1_000);
    newest.insert(updated.appid.clone(), updated.clone());
    writer.put_later(updated);
    let added = big(failed_at + 1);
    newest.insert(added.appid.clone(), added.clone());
    assert!(writer.put(added).await.is_err(), "the disk is still full");
    newest.remove(&big(2).appid);
    writer.remove_later(big(2).appid);
    writer.flush().await;
    assert!(writer.failing().is_some());
    // Closing and reopening the database after the errors never unlocked the file.
    let err = RedbStore::open(&path)
        .err()
        .expect("the file is still in use");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");

    tmpfs.resize("16m");
    // Without a restart, a new write works again...
    let last = with_calls(big(3), 2_000);
    newest.insert(last.appid.clone(), last.clone());
    writer
        .put(last)
        .await
        .expect("the store writes again once space returns");
    // ...and the writer writes everything still dirty on its own.
    RECOVERY
        .until("the store is healthy again", || writer.failing().is_none())
        .await;
    assert_eq!(store_up(&metrics, "redb"), 1.0);
    writer.close().await;

    let reopened = RedbStore::open(&path).unwrap();
    let stored = reopened.load_all().unwrap();
    let stored_ids: Vec<&AppId> = stored.iter().map(|a| &a.appid).collect();
    let newest: Vec<StoredAccount> = newest.into_values().collect();
    let newest_ids: Vec<&AppId> = newest.iter().map(|a| &a.appid).collect();
    assert_eq!(stored_ids, newest_ids);
    // Compare without printing 100 KB tokens on failure.
    for (stored, newest) in stored.iter().zip(&newest) {
        assert!(stored == newest, "{} is not its newest state", stored.appid);
    }
}

/// Sets the process umask for the life of the guard.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask has no memory-safety preconditions.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_new_store_is_a_0600_file_in_a_0700_directory_whatever_the_umask() {
    let _umask = Umask::set(0o022);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var/lib/wxtoken");
    let path = data.join("wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .unwrap();
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&path), 0o600, "the store file");
}

#[test]
fn an_existing_store_left_readable_by_others_is_tightened() {
    let _umask = Umask::set(0o022);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("wxtoken.redb");
    drop(RedbStore::open(&path).unwrap());
    // What an older wxtoken left behind.
    chmod(&data, 0o755);
    chmod(&path, 0o644);
    let store = RedbStore::open(&path).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&path), 0o600, "the store file");
}

#[test]
fn a_directory_shared_with_other_files_keeps_its_mode_but_the_store_file_is_0600() {
    let _umask = Umask::set(0o022);
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("srv");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("accounts.yaml"), "accounts: []\n").unwrap();
    chmod(&shared, 0o755);
    let path = shared.join("wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .unwrap();
    // Not only the store's: tightening it could break whatever else lives
    // there, so wxtoken warns instead.
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&path), 0o600, "the store file");
}

mod shared_open_platform_state {
    //! The Redis store of replicas: every replica writes its own view of an
    //! Open Platform account, and the shared record is their merge.

    use redis::Commands;
    use wxtoken::clock::Clock;
    use wxtoken::domain::Authorization;
    use wxtoken::replica::{ReplicaOptions, Shared};
    use wxtoken::store::{StoredOpen, VerifyTicket};

    use super::*;

    const URL: &str = "redis://127.0.0.1:6379/0";

    async fn replica_store(prefix: &str) -> wxtoken::replica::RedisStore {
        let shared = Shared::connect(
            &secrecy::SecretString::from(URL.to_string()),
            prefix,
            ReplicaOptions::default(),
            Metrics::new(),
            Clock::system(),
        )
        .await
        .expect("the machine's Redis answers (.ci/run installs it)");
        shared.store()
    }

    fn authorizer(refresh: &str, authorization: Authorization, at: i64) -> StoredAccount {
        StoredAccount {
            open: Some(StoredOpen {
                component: Some(appid("wx9999999999999999")),
                authorization: Some(authorization),
                refresh_token: Some(AccessToken::new(format!("refresh@@@{refresh}0123456789"))),
                auth_code: None,
                changed_at_ms: at,
                verify_tickets: Vec::new(),
            }),
            ..stable_without_token("wx1111111111111111")
        }
    }

    fn component(tickets: &[i64]) -> StoredAccount {
        StoredAccount {
            open: Some(StoredOpen {
                verify_tickets: tickets
                    .iter()
                    .map(|n| VerifyTicket {
                        ticket: AccessToken::new(format!("ticket@@@{n}0123456789")),
                        created_at_ms: *n,
                        received_at_ms: *n,
                    })
                    .collect(),
                ..StoredOpen::default()
            }),
            ..stable_without_token("wx9999999999999999")
        }
    }

    fn open_of(store: &dyn Storage, id: &str) -> StoredOpen {
        store
            .load_all()
            .unwrap()
            .into_iter()
            .find(|a| a.appid.as_str() == id)
            .and_then(|a| a.open)
            .unwrap_or_else(|| panic!("{id} has no Open Platform state"))
    }

    #[actix_web::test]
    async fn an_older_view_written_last_never_takes_back_a_refresh_token_a_revocation_or_a_ticket()
    {
        let prefix = format!("wxtoken-test-store-{:016x}", rand::random::<u64>());
        let a = replica_store(&prefix).await;
        let b = replica_store(&prefix).await;

        // A rotated the refresh token; B, behind, writes its older view after.
        a.put(&authorizer("two", Authorization::Authorized, 200))
            .unwrap();
        b.put(&authorizer("one", Authorization::Authorized, 100))
            .unwrap();
        let open = open_of(&b, "wx1111111111111111");
        assert_eq!(
            open.refresh_token.as_ref().map(|t| t.expose().to_string()),
            Some("refresh@@@two0123456789".to_string())
        );

        // B's revocation is newer: it stays whatever A writes after, and the
        // refresh token is kept with it.
        let mut revoked = authorizer("two", Authorization::Unauthorized, 300);
        revoked.open.as_mut().unwrap().refresh_token = None;
        b.put(&revoked).unwrap();
        a.put(&authorizer("two", Authorization::Authorized, 200))
            .unwrap();
        let open = open_of(&a, "wx1111111111111111");
        assert_eq!(open.authorization, Some(Authorization::Unauthorized));
        assert!(
            open.refresh_token.is_some(),
            "the refresh token was dropped"
        );

        // Tickets pushed to either replica are all kept (the newest few).
        a.put(&component(&[1, 2])).unwrap();
        b.put(&component(&[3])).unwrap();
        let created: Vec<i64> = open_of(&a, "wx9999999999999999")
            .verify_tickets
            .iter()
            .map(|t| t.created_at_ms)
            .collect();
        assert_eq!(created, vec![1, 2, 3]);

        // Other replicas find the component's authorizers in one set.
        let mut redis = redis::Client::open(URL).unwrap().get_connection().unwrap();
        let members: Vec<String> = redis
            .smembers(format!("{prefix}:authorizers:wx9999999999999999"))
            .unwrap();
        assert_eq!(members, vec!["wx1111111111111111".to_string()]);
        let keys: Vec<String> = redis.keys(format!("{prefix}:*")).unwrap();
        let _: () = redis.del(keys).unwrap();
    }
}
