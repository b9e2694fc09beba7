//! The pages in a real browser: runs the Node tests in `tests/browser/`
//! (playwright-core driving Debian's headless Chromium) against the hearth
//! binary cargo has just built, so `cargo test` covers the peer page and the
//! staff console too.
//!
//! Builds nothing itself. Needs `node`, `/usr/bin/chromium` and
//! `tests/browser/node_modules`, which `bash .ci/test` installs; when one is
//! missing this test fails and says so, unless `HEARTH_SKIP_BROWSER=1`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole suite takes about three minutes on a busy 2-core machine;
/// this only stops a hung browser.
const DEADLINE: Duration = Duration::from_secs(600);

const CHROMIUM: &str = "/usr/bin/chromium";

fn missing(what: &str) -> ! {
    panic!(
        "browser tests: {what}. Run `bash .ci/test`, which installs Chromium and the npm \
         packages, or set HEARTH_SKIP_BROWSER=1 to skip these tests."
    )
}

#[test]
fn pages_in_a_real_browser() {
    if std::env::var("HEARTH_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("note: HEARTH_SKIP_BROWSER=1, the browser tests (tests/browser/) were skipped");
        return;
    }
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        missing("`node` (Node.js 20 or newer) was not found on PATH");
    }
    let chromium = std::env::var("HEARTH_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    if !Path::new(&chromium).exists() {
        missing(&format!(
            "{chromium} was not found (Debian package `chromium`)"
        ));
    }
    for package in ["playwright-core", "axe-core"] {
        if !dir.join("node_modules").join(package).exists() {
            missing(&format!(
                "tests/browser/node_modules/{package} is missing (`npm ci --prefix tests/browser`)"
            ));
        }
    }

    let started = Instant::now();
    let mut cmd = Command::new("node");
    // Its own process group, so a hung run can be stopped with the hubs
    // and browsers it started, and nothing else.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("HEARTH_BIN", env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            #[cfg(unix)]
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let report = format!(
        "{out}\n{err}\n(browser tests took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => println!("{report}"),
        Some(s) => panic!("browser tests failed ({s}):\n{report}"),
        None => panic!(
            "browser tests did not finish within {} s:\n{report}",
            DEADLINE.as_secs()
        ),
    }
}
