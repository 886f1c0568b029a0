//! SQL over HTTP on a coordinator (`--http-listen`): the guide's two curl
//! commands run verbatim (only `API_URL` and the environment set), the
//! rows come back with a `$1` parameter on a JSON field, bad requests get
//! 4xx with the reason, and the gRPC `Execute` gives the same answers.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use support::services::{free_port, Proc};
use support::*;

const TOKEN: &str = "s3cret-token";

struct Coordinator {
    _proc: Proc,
    grpc: u16,
    url: String,
}

/// A coordinator on two free ports, tried again on others if one was
/// taken before the coordinator could bind it.
fn start(dir: &Path) -> Coordinator {
    std::fs::write(dir.join("tokens"), format!("{TOKEN}\n")).unwrap();
    let mut attempt = 0;
    loop {
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = sluice();
        cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
            .arg("--storage-uri")
            .arg(dir.join("lake"))
            .arg("--auth-tokens-file")
            .arg(dir.join("tokens"));
        let mut proc = Proc::spawn(cmd, &dir.join("coordinator.log"));
        match proc.wait_listening(http, "coordinator HTTP") {
            Ok(()) => return Coordinator { _proc: proc, grpc, url: format!("http://127.0.0.1:{http}") },
            Err(e) if attempt < 2 => eprintln!("{e}\nstarting it again on other ports"),
            Err(e) => panic!("{e}"),
        }
        attempt += 1;
    }
}

/// `curl` a JSON body: (HTTP status, parsed answer).
fn post(url: &str, token: Option<&str>, body: &str, headers: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url, "-H", "Content-Type: application/json", "--data-binary", "@-"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("curl must be installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (answer, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(answer).unwrap_or_else(|_| Value::String(answer.to_string())))
}

fn query(c: &Coordinator, body: Value) -> (u16, Value) {
    post(&format!("{}/workspaces/ws/tables/query", c.url), Some(TOKEN), &body.to_string(), &[])
}

#[test]
fn the_guides_curl_commands_run_verbatim_and_rows_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());

    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/guide_curl.sh")).unwrap();
    let line = "API_URL=\"https://api.deeplake.ai\"";
    assert!(script.contains(line));
    let script = script.replace(line, &format!("API_URL=\"{}\"", c.url));
    let out = run(Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("DEEPLAKE_API_KEY", TOKEN)
        .env("DEEPLAKE_ORG_ID", "org-1")
        .env("DEEPLAKE_WORKSPACE", "ws"));
    assert!(out.status.success());
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout).into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0]["command"], "CREATE TABLE", "{answers:?}");
    assert_eq!((answers[1]["command"].as_str(), answers[1]["row_count"].as_u64()), (Some("INSERT"), Some(3)), "{answers:?}");
    assert!(dir.path().join("lake/ws/massive_video_lake/_versions").is_dir(), "the table lives in the workspace directory");

    // Back with a $1 parameter on a JSON field; ids were assigned 1, 2, 3.
    let (code, got) = query(
        &c,
        json!({"query": "SELECT id, filename, metadata FROM \"ws\".\"massive_video_lake\" WHERE json_get_int(metadata, 'fps') = $1 ORDER BY id", "params": [30]}),
    );
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["columns"], json!(["id", "filename", "metadata"]));
    assert_eq!(
        got["rows"],
        json!([[1, "video_001.mp4", {"duration": 120, "fps": 30}], [3, "video_003.mp4", {"duration": 200, "fps": 30}]])
    );

    // params_batch with an Idempotency-Key lands once.
    let batch = json!({"query": "INSERT INTO massive_video_lake (filename, metadata) VALUES ($1, $2::jsonb)",
                       "params_batch": [["video_004.mp4", "{\"fps\": 24}"], ["video_005.mp4", "{\"fps\": 24}"]]}).to_string();
    let url = format!("{}/workspaces/ws/tables/query", c.url);
    let (code, first) = post(&url, Some(TOKEN), &batch, &["Idempotency-Key: batch-7"]);
    assert_eq!((code, first["row_count"].as_u64()), (200, Some(2)), "{first}");
    let (code, again) = post(&url, Some(TOKEN), &batch, &["Idempotency-Key: batch-7"]);
    assert_eq!((code, again["row_count"].as_u64(), again["replayed"].as_bool()), (200, Some(0), Some(true)), "{again}");
    let (_, count) = query(&c, json!({"query": "SELECT count(*) AS n, max(id) AS top FROM massive_video_lake"}));
    assert_eq!(count["rows"], json!([[5, 5]]));

    // The gRPC Execute (through `sluice sql --coordinator`) answers the same.
    let out = run(sluice()
        .args(["sql", "--coordinator", &format!("http://127.0.0.1:{}", c.grpc), "--workspace", "ws"])
        .args(["--params", "[24]", "SELECT filename FROM massive_video_lake WHERE json_get_int(metadata, 'fps') = $1 ORDER BY id"])
        .env("SLUICE_TOKEN", TOKEN));
    assert!(out.status.success());
    let grpc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(grpc["rows"], json!([["video_004.mp4"], ["video_005.mp4"]]), "{grpc}");

    // Tables are listed per workspace, as the guide's client expects.
    let list = Command::new("curl").args(["-s", "-H", &format!("Authorization: Bearer {TOKEN}"), &format!("{}/workspaces/ws/tables", c.url)]).output().unwrap();
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["tables"][0]["table_name"], "massive_video_lake", "{list}");
    assert_eq!(list["tables"][0]["rows"], 5, "{list}");
}

#[test]
fn bad_requests_get_4xx_with_the_reason_never_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let url = format!("{}/workspaces/ws/tables/query", c.url);
    let create = json!({"query": "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, n BIGINT, meta JSONB)"}).to_string();
    assert_eq!(post(&url, Some(TOKEN), &create, &[]).0, 200);
    assert_eq!(post(&url, Some(TOKEN), &json!({"query": "INSERT INTO t (name, n) VALUES ($1, $2)", "params": ["alice", 1]}).to_string(), &[]).0, 200);

    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (None, create.clone(), 401, "bearer token"),
        (Some("wrong"), create.clone(), 401, "bearer token"),
        (Some(TOKEN), create.clone(), 409, "already exists"),
        (Some(TOKEN), json!({"query": "SELEC * FROM t"}).to_string(), 400, "SQL syntax"),
        (Some(TOKEN), json!({"query": "SELECT nope FROM t"}).to_string(), 400, "nope"),
        (Some(TOKEN), json!({"query": "INSERT INTO t (name, color) VALUES ('x', 'red')"}).to_string(), 400, "unknown column `color`"),
        (Some(TOKEN), json!({"query": "INSERT INTO t (name, n) VALUES ($1, $2)", "params": ["x", "many"]}).to_string(), 400, "row 0"),
        (Some(TOKEN), json!({"query": "INSERT INTO t (n) VALUES (1)"}).to_string(), 400, "column `name` is required"),
        (Some(TOKEN), json!({"query": "INSERT INTO t (name, meta) VALUES ('x', $1::jsonb)", "params": ["{oops"]}).to_string(), 400, "invalid input for type json"),
        (Some(TOKEN), json!({"query": "SELECT * FROM nowhere"}).to_string(), 404, "\"ws\".\"nowhere\" does not exist"),
        (Some(TOKEN), json!({"query": "DROP TABLE nowhere"}).to_string(), 404, "does not exist"),
        (Some(TOKEN), "{\"query\": ".to_string(), 400, "not the expected JSON"),
        (Some(TOKEN), json!({"sql": "SELECT 1"}).to_string(), 400, "missing field `query`"),
        (Some(TOKEN), json!({"query": "SELECT 1", "params": [1], "params_batch": [[1]]}).to_string(), 400, "not both"),
        (Some(TOKEN), json!({"query": "UPDATE t SET n = 2"}).to_string(), 400, "not supported"),
        (Some(TOKEN), json!({"query": "SELECT 1; DROP TABLE t"}).to_string(), 400, "one statement per request"),
    ];
    for (token, body, want_code, want_text) in cases {
        let (code, answer) = post(&url, token, &body, &[]);
        assert_eq!(code, want_code, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(want_text)), "{body}: {answer}");
    }

    // Over the request limit: 413.
    let big = json!({"query": "SELECT $1", "params": ["x".repeat(17 << 20)]}).to_string();
    assert_eq!(post(&url, Some(TOKEN), &big, &[]).0, 413);

    // Parameters are values: an injection attempt matches and deletes nothing.
    for attack in ["alice' OR '1'='1", "x'; DROP TABLE t; --"] {
        let (code, got) = query(&c, json!({"query": "SELECT name FROM t WHERE name = $1", "params": [attack]}));
        assert_eq!((code, got["row_count"].as_u64()), (200, Some(0)), "{got}");
        let (code, got) = query(&c, json!({"query": "DELETE FROM t WHERE name = $1", "params": [attack]}));
        assert_eq!((code, got["row_count"].as_u64()), (200, Some(0)), "{got}");
    }
    let (_, left) = query(&c, json!({"query": "SELECT id, name, n FROM t"}));
    assert_eq!(left["rows"], json!([[1, "alice", 1]]));

    // Unknown endpoints are 404, operations endpoints need no token.
    let (code, _) = post(&format!("{}/nope", c.url), Some(TOKEN), "{}", &[]);
    assert_eq!(code, 404);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}{path}", c.url)]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{path}");
    }
}
