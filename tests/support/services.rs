//! Real services for integration tests, started on free loopback ports and
//! stopped when dropped: moto (S3), etcd, and sluice processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::python;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP GET on loopback: (status code, body).
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

pub fn wait_port(port: u16, what: &str) {
    let _ = wait_port_unless(port, what, || None, String::new);
}

/// Wait until `port` takes connections: Err with what `ended` says once it
/// says something (the process that was to listen is gone); a panic with
/// `log` after 90 s.
fn wait_port_unless(port: u16, what: &str, mut ended: impl FnMut() -> Option<String>, log: impl Fn() -> String) -> Result<(), String> {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(why) = ended() {
            return Err(why);
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{what} did not start on port {port}{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let bin = std::path::Path::new(&python()).with_file_name("moto_server");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed beside SLUICE_PYTHON (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_port(port, "moto");
        Self { child, endpoint }
    }

    pub fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
            self.endpoint
        );
        assert!(Command::new(python()).args(["-c", &script]).status().unwrap().success());
    }

    /// Every object under `prefix` in `bucket`: key, size and ETag (a
    /// multipart upload's ETag ends in `-<parts>`).
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64, String)> {
        let script = format!(
            "import boto3, json; s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1'); \
             pages = s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'); \
             print(json.dumps([[o['Key'], o['Size'], o['ETag'].strip('\"')] for p in pages for o in p.get('Contents', [])]))",
            self.endpoint
        );
        let out = Command::new(python()).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Options to open a table on this server through the Lance API.
    pub fn storage_options(&self) -> std::collections::HashMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("allow_http", "true"),
            ("aws_virtual_hosted_style_request", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The same settings as environment variables (for cluster processes).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    pub fn flags(&self) -> Vec<String> {
        ["--s3-endpoint", &self.endpoint, "--s3-region", "us-east-1", "--s3-access-key-id", "test", "--s3-secret-access-key", "test", "--s3-allow-http"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Etcd {
    child: Child,
    pub endpoint: String,
    ports: (u16, u16),
    dir: tempfile::TempDir,
}

impl Etcd {
    /// etcd from Debian's etcd-server, tuned to elect itself at once.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        let child = Self::spawn(dir.path(), ports);
        Self { child, endpoint: format!("http://127.0.0.1:{}", ports.0), ports, dir }
    }

    fn spawn(dir: &Path, (client, peer): (u16, u16)) -> Child {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("default={p}")])
            .args(["--heartbeat-interval=10", "--election-timeout=100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd must be installed (Debian etcd-server)");
        wait_port(client, "etcd");
        child
    }

    /// `kill -9`, then start again on the same data and ports after `down`.
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self.dir.path(), self.ports);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sluice process (coordinator, worker), killed when dropped. Its stderr
/// goes to a log file the test can read.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        // Info logs unless the test asked for another level.
        if !cmd.get_envs().any(|(k, _)| k == "SLUICE_LOG") {
            cmd.env("SLUICE_LOG", "info,lance=warn");
        }
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Self { child, log: log.to_path_buf() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `port` takes connections. Err, with the process's log,
    /// if it ended first (as when another process took the port between
    /// [`free_port`] choosing it and the bind).
    #[allow(dead_code)]
    pub fn wait_listening(&mut self, port: u16, what: &str) -> Result<(), String> {
        let log = self.log.clone();
        let log = move || format!("; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        let child = &mut self.child;
        let ended = || child.try_wait().ok().flatten().map(|status| format!("{what} ended ({status}) before it listened on port {port}{}", log()));
        wait_port_unless(port, what, ended, &log)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
