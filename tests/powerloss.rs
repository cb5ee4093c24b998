//! A power cut, modelled: which acknowledged runs survive it in each `redis.durability` mode.
//!
//! `kill -9` of Redis loses nothing the kernel already holds: the page cache still reaches the
//! disk. A power cut loses what no fsync had reached. To model it, the test's `redis-server`
//! runs with a small preloaded library (`tests/fixtures/powerloss/fsync_shim.c`, built here with
//! the C compiler every Rust toolchain links with) that records, for every successful
//! `fsync`/`fdatasync`, the file's size before the call. Under a steady stream of run creations
//! the test kills Redis with SIGKILL, cuts each append-only file back to the last size an fsync
//! covered, starts Redis again on what is left and counts the acknowledged runs that are gone.
//!
//! The figures are printed (`cargo nextest run --test powerloss
//! --no-capture`); the assertions are the guarantees: `always` loses nothing acknowledged, and
//! `everysec` does lose acknowledged runs under the same model (so the model is not vacuous).
//! `waitaof` needs Redis 7.2 or later; on an older server its test says so and checks nothing,
//! and on 7.4.0 to 7.4.2, whose `WAITAOF` answers before the fsync (this test found it), it checks
//! that `serve` refuses the mode. Put another `redis-server` first on `PATH` to check yours.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Map;
use steward_engine::companies::{Companies, sample};
use steward_engine::store::{Durability, NewRun, Store};
use steward_engine::{Db, Keys, SystemClock};
use steward_schemas::RunId;
use steward_tests::{plan, wait_for};

/// How long the load runs before the power is cut (several of `everysec`'s one-second fsyncs).
const LOAD_FOR: Duration = Duration::from_secs(3);
/// The fewest acknowledged runs a cut must follow for its figure to mean something.
const ACKED_BEFORE_CUT: usize = 300;
/// Concurrent creators (as many API requests in flight).
const CREATORS: usize = 16;

/// Builds the fsync-recording library once per test binary run, into `dir`.
fn build_shim(dir: &Path) -> Result<PathBuf> {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/powerloss/fsync_shim.c");
    let out = dir.join("fsync_shim.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .with_context(|| format!("running the C compiler `{cc}` (set CC to another)"))?;
    ensure!(
        status.success(),
        "{cc} could not build {}",
        source.display()
    );
    Ok(out)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private `redis-server` on `dir`, with the fsync recorder when `shim` is given.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, port: u16, fsync: &str, shim: Option<(&Path, &Path)>) -> Result<Self> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--save", "", "--daemonize", "no"])
            .args(["--appendonly", "yes", "--appendfsync", fsync])
            // No rewrite in the middle of the test: the cut applies to the incremental files.
            .args(["--auto-aof-rewrite-percentage", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((lib, log)) = shim {
            cmd.env("LD_PRELOAD", lib).env("STEWARD_FSYNC_LOG", log);
        }
        let child = cmd
            .spawn()
            .context("starting redis-server (scripts/setup installs it)")?;
        Ok(Self { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn connect(url: &str) -> Result<Db> {
    wait_for(
        "redis-server to answer",
        Duration::from_secs(20),
        || async {
            match Db::connect(url, Duration::from_secs(5)).await {
                Ok(db) => {
                    let pong: redis::RedisResult<String> = db.query(&redis::cmd("PING")).await;
                    Ok(pong.ok().map(|_| db))
                }
                Err(_) => Ok(None),
            }
        },
    )
    .await
}

/// Cuts every append-only file in `dir/appendonlydir` back to the last size an fsync covered
/// (to nothing if no fsync ever reached it). Returns the bytes cut.
fn cut_power(dir: &Path, fsync_log: &Path) -> Result<u64> {
    let log = std::fs::read_to_string(fsync_log).unwrap_or_default();
    let mut synced: HashMap<PathBuf, u64> = HashMap::new();
    for line in log.lines() {
        if let Some((path, size)) = line.split_once('\t') {
            let size: u64 = size.parse().context("a size in the fsync log")?;
            let entry = synced.entry(PathBuf::from(path)).or_default();
            *entry = (*entry).max(size);
        }
    }
    let mut cut = 0;
    for entry in std::fs::read_dir(dir.join("appendonlydir"))? {
        let path = entry?.path();
        if !path.to_string_lossy().ends_with(".incr.aof") {
            continue;
        }
        let len = std::fs::metadata(&path)?.len();
        let keep = synced.get(&path).copied().unwrap_or(0).min(len);
        cut += len - keep;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(keep)?;
    }
    Ok(cut)
}

/// What one power cut did.
#[derive(Debug)]
struct Cut {
    acked: usize,
    lost: usize,
    bytes_cut: u64,
    runs_per_s: f64,
    /// `WAITAOF` batches sent (the durability lane's marker), just before the cut.
    waitaof_batches: u64,
}

/// Creates runs from `CREATORS` tasks for `LOAD_FOR` (and at least `ACKED_BEFORE_CUT` runs), cuts
/// the power and counts the acknowledged runs that did not survive.
async fn power_cut(fsync: &str, durability: Durability) -> Result<Cut> {
    steward_tests::init_logs();
    let work = tempfile::Builder::new()
        .prefix("steward-powerloss-")
        .tempdir()?;
    let shim = build_shim(work.path())?;
    let data = work.path().join("data");
    std::fs::create_dir(&data)?;
    let fsync_log = work.path().join("fsync.log");
    let port = free_port()?;
    let mut server = Server::start(&data, port, fsync, Some((&shim, &fsync_log)))?;

    let keys = Keys::new("pl", 4)?;
    let store = Store::new(
        connect(&server.url()).await?,
        keys.clone(),
        Arc::new(SystemClock),
    )
    .with_durability(durability);
    store.check_durability().await?;
    store.prepare().await?;
    steward_engine::companies::ensure(
        &Companies::for_store(&store),
        sample("contoso", &["alice@msp.example"]),
    )
    .await?;
    let plan = plan(
        "name: powerloss\nsteps:\n  - id: one\n    op: noop\n  - id: two\n    op: noop\n    needs: [one]\n",
    );

    let acked: Arc<Mutex<Vec<RunId>>> = Arc::default();
    let started = Instant::now();
    let mut creators = Vec::new();
    for _ in 0..CREATORS {
        let (store, plan, acked) = (store.clone(), plan.clone(), acked.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let made = store
                    .create_run(NewRun {
                        plan: plan.clone(),
                        company: "contoso".parse().expect("a company id"),
                        company_settings: Map::new(),
                        inputs: Map::new(),
                        requested_by: "powerloss".to_owned(),
                        start_at: None,
                        ticket: None,
                    })
                    .await;
                match made {
                    Ok(run) => acked.lock().expect("not poisoned").push(run),
                    // The power is out: nothing more is acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for(
        "the load to run its course",
        Duration::from_secs(120),
        || async {
            let enough = acked.lock().expect("not poisoned").len() >= ACKED_BEFORE_CUT;
            Ok((enough && started.elapsed() >= LOAD_FOR).then_some(()))
        },
    )
    .await?;
    let waitaof_batches: Option<u64> = store
        .db()
        .query(redis::cmd("GET").arg(keys.durability_marker(0)))
        .await?;
    // The cut: SIGKILL, then what no fsync reached is gone.
    server.kill9();
    let elapsed = started.elapsed();
    for creator in creators {
        let _ = creator.await;
    }
    let acked = std::mem::take(&mut *acked.lock().expect("not poisoned"));
    let bytes_cut = cut_power(&data, &fsync_log)?;

    let server = Server::start(&data, port, fsync, None)?;
    let db = connect(&server.url()).await?;
    let mut pipe = redis::pipe();
    for run in &acked {
        pipe.cmd("EXISTS").arg(keys.run(*run));
    }
    let exists: Vec<bool> = db.pipe(&pipe).await?;
    let lost = exists.iter().filter(|e| !**e).count();
    let cut = Cut {
        acked: acked.len(),
        lost,
        bytes_cut,
        runs_per_s: acked.len() as f64 / elapsed.as_secs_f64(),
        waitaof_batches: waitaof_batches.unwrap_or(0),
    };
    println!(
        "power cut, appendfsync {fsync}, redis.durability = {durability:?}: {} runs acknowledged ({:.0}/s), {} lost ({:.1}%), {} bytes of AOF never fsynced",
        cut.acked,
        cut.runs_per_s,
        cut.lost,
        100.0 * cut.lost as f64 / cut.acked.max(1) as f64,
        cut.bytes_cut
    );
    Ok(cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_appendfsync_always_a_power_cut_loses_no_acknowledged_run() -> Result<()> {
    let cut = power_cut("always", Durability::Always).await?;
    ensure!(cut.acked >= ACKED_BEFORE_CUT, "{cut:?}");
    ensure!(
        cut.lost == 0,
        "{} of {} acknowledged runs were lost with appendfsync always",
        cut.lost,
        cut.acked
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everysec_a_power_cut_loses_the_last_acknowledged_runs() -> Result<()> {
    let cut = power_cut("everysec", Durability::Everysec).await?;
    ensure!(cut.acked >= ACKED_BEFORE_CUT, "{cut:?}");
    // The model is not vacuous: acknowledged writes that no fsync reached are gone.
    ensure!(
        cut.bytes_cut > 0 && cut.lost > 0,
        "a power cut under constant load with appendfsync everysec lost nothing ({cut:?}): the fsync recorder is not working"
    );
    ensure!(cut.lost < cut.acked, "every run was lost: {cut:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_waitaof_a_power_cut_loses_no_acknowledged_run() -> Result<()> {
    let version = Command::new("redis-server").arg("--version").output()?;
    let text = String::from_utf8_lossy(&version.stdout);
    let Some(v) = text
        .split("v=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
    else {
        bail!("cannot read the redis-server version from {text:?}");
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if (major, minor) < (7, 2) {
        println!(
            "redis-server {v} has no WAITAOF (Redis 7.2 or later): redis.durability = waitaof cannot be used with it, and this test checks nothing here"
        );
        return Ok(());
    }
    if (major, minor) == (7, 4) && patch <= 2 {
        // Its WAITAOF answers before the fsync (redis/redis#13793): serve must refuse it.
        let work = tempfile::tempdir()?;
        let server = Server::start(work.path(), free_port()?, "everysec", None)?;
        let store = Store::new(
            connect(&server.url()).await?,
            Keys::new("pl", 4)?,
            Arc::new(SystemClock),
        )
        .with_durability(Durability::Waitaof);
        let refused = store.check_durability().await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        ensure!(
            message.contains("redis/redis#13793") && message.contains("durability = always"),
            "redis-server {v} has the early WAITAOF, but the check said: {message:?}"
        );
        return Ok(());
    }
    let cut = power_cut("everysec", Durability::Waitaof).await?;
    ensure!(cut.acked >= ACKED_BEFORE_CUT, "{cut:?}");
    ensure!(cut.lost == 0, "waitaof lost acknowledged runs: {cut:?}");
    // One WAITAOF confirms a batch of new runs: it is not one fsync wait per run.
    ensure!(
        cut.waitaof_batches > 0 && (cut.waitaof_batches as usize) * 4 <= cut.acked,
        "{} WAITAOF batches for {} runs: the waits are not grouped",
        cut.waitaof_batches,
        cut.acked
    );
    Ok(())
}
