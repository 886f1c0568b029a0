use serde_json::json;

use super::*;

fn request(query: &str, params: Value) -> Request {
    Request { query: query.into(), params: serde_json::from_value(params).unwrap(), ..Default::default() }
}

async fn run(catalog: &Catalog, query: &str, params: Value) -> Result<Response> {
    execute(catalog, Some("ws"), request(query, params), None).await
}

fn catalog(dir: &tempfile::TempDir) -> Catalog {
    Catalog::new(dir.path().to_str().unwrap(), HashMap::new()).unwrap()
}

#[tokio::test]
async fn the_guides_statements_create_insert_and_query_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = catalog(&dir);
    let create = r#"CREATE TABLE IF NOT EXISTS "ws"."videos" (id BIGSERIAL PRIMARY KEY, filename TEXT, metadata JSONB) USING deeplake"#;
    let made = run(&c, create, json!([])).await.unwrap();
    assert_eq!(made.command, "CREATE TABLE");
    assert!(dir.path().join("ws/videos/_versions").is_dir(), "the table lives at <root>/ws/videos");
    // Again: a no-op; without IF NOT EXISTS: a conflict.
    run(&c, create, json!([])).await.unwrap();
    let again = run(&c, r#"CREATE TABLE "ws"."videos" (x TEXT)"#, json!([])).await.unwrap_err();
    assert!(matches!(again, Error::Conflict(_)), "{again}");

    let insert = r#"INSERT INTO "ws"."videos" (filename, metadata) VALUES ($1, $2::jsonb), ($3, $4::jsonb), ($5, $6::jsonb)"#;
    let params = json!(["video_001.mp4", "{\"duration\": 120, \"fps\": 30}", "video_002.mp4", "{\"duration\": 95, \"fps\": 60}", "video_003.mp4", "{\"duration\": 200, \"fps\": 30}"]);
    let done = run(&c, insert, params).await.unwrap();
    assert_eq!((done.command.as_str(), done.row_count), ("INSERT", 3));

    let rows = run(&c, "SELECT id, filename, metadata FROM videos WHERE json_get_int(metadata, 'fps') = $1 ORDER BY id", json!([30])).await.unwrap();
    assert_eq!(rows.columns, ["id", "filename", "metadata"]);
    assert_eq!(rows.rows, vec![json!([1, "video_001.mp4", {"duration": 120, "fps": 30}]), json!([3, "video_003.mp4", {"duration": 200, "fps": 30}])]);

    // params_batch: the statement once per set, one commit; ids go on.
    let batch = Request {
        query: r#"INSERT INTO videos (filename, metadata) VALUES ($1, $2)"#.into(),
        params_batch: Some(vec![vec![json!("a.mp4"), json!({"fps": 24})], vec![json!("b.mp4"), Value::Null]]),
        ..Default::default()
    };
    let before = done.version.unwrap();
    let landed = execute(&c, Some("ws"), batch.clone(), Some("k1".into())).await.unwrap();
    assert_eq!((landed.row_count, landed.version), (2, Some(before + 1)));
    let replayed = execute(&c, Some("ws"), batch, Some("k1".into())).await.unwrap();
    assert!(replayed.replayed && replayed.row_count == 0);

    // A process that forgot its counters finds them in the last commit.
    insert::forget_table(&c.location(Some("ws"), "videos").unwrap().uri);
    run(&c, "INSERT INTO videos (filename) VALUES ('c.mp4')", json!([])).await.unwrap();
    let ids = run(&c, "SELECT id FROM videos ORDER BY id", json!([])).await.unwrap();
    assert_eq!(ids.rows, (1..=6).map(|i| json!([i])).collect::<Vec<_>>());
}

#[tokio::test]
async fn parameters_are_values_not_sql() {
    let dir = tempfile::tempdir().unwrap();
    let c = catalog(&dir);
    run(&c, "CREATE TABLE t (id BIGSERIAL, name TEXT)", json!([])).await.unwrap();
    run(&c, "INSERT INTO t (name) VALUES ($1), ($2)", json!(["alice", "bob"])).await.unwrap();
    for attack in ["x' OR '1'='1", "alice' --", "x\\' OR 1=1 --", "a''b' OR 'x'='x", "x\\\\' OR true --"] {
        let got = run(&c, "SELECT name FROM t WHERE name = $1", json!([attack])).await.unwrap();
        assert_eq!(got.row_count, 0, "{attack}");
        let deleted = run(&c, "DELETE FROM t WHERE name = $1", json!([attack])).await.unwrap();
        assert_eq!(deleted.row_count, 0, "{attack}");
    }
    // The stored text is the parameter, byte for byte.
    run(&c, "INSERT INTO t (name) VALUES ($1)", json!(["o'brien; DROP TABLE t"])).await.unwrap();
    let got = run(&c, "SELECT name FROM t WHERE name = $1", json!(["o'brien; DROP TABLE t"])).await.unwrap();
    assert_eq!(got.rows, vec![json!(["o'brien; DROP TABLE t"])]);
    let deleted = run(&c, "DELETE FROM t WHERE id = $1 OR name = $2", json!([1, "o'brien; DROP TABLE t"])).await.unwrap();
    assert_eq!(deleted.row_count, 2);
    let left = run(&c, "SELECT name FROM t", json!([])).await.unwrap();
    assert_eq!(left.rows, vec![json!(["bob"])]);
}

#[tokio::test]
async fn bad_statements_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let c = catalog(&dir);
    run(&c, "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL, meta JSONB)", json!([])).await.unwrap();
    let cases: [(&str, Value, &str); 10] = [
        ("SELEC 1", json!([]), "SQL syntax"),
        ("SELECT 1; SELECT 2", json!([]), "one statement per request"),
        ("SELECT nope FROM t", json!([]), "nope"),
        ("INSERT INTO t (nope) VALUES (1)", json!([]), "unknown column `nope`"),
        ("INSERT INTO t (n) VALUES ($1::bigint)", json!(["seven"]), "invalid input for type bigint"),
        ("INSERT INTO t (n) VALUES ($1)", json!(["seven"]), "row 0"),
        ("INSERT INTO t (meta) VALUES ($1)", json!([{}]), "column `n` is required"),
        ("INSERT INTO t (n) VALUES ($2)", json!([1]), "uses $2 but 1 parameters"),
        ("INSERT INTO t (n, meta) VALUES (1, $1::jsonb)", json!(["{not json"]), "invalid input for type json"),
        ("CREATE TABLE u (x NUMERIC(10,2))", json!([]), "column type NUMERIC(10,2) is not supported"),
    ];
    for (sql, params, want) in cases {
        let err = run(&c, sql, params).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)) && err.to_string().contains(want), "{sql}: {err}");
    }
    for sql in ["SELECT * FROM missing", "INSERT INTO missing (x) VALUES (1)", "DELETE FROM missing", "DROP TABLE missing"] {
        let err = run(&c, sql, json!([])).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)) && err.to_string().contains("\"ws\".\"missing\" does not exist"), "{sql}: {err}");
    }
    let err = run(&c, "UPDATE t SET n = 1", json!([])).await.unwrap_err();
    assert!(err.to_string().contains("UPDATE statements are not supported"), "{err}");
    assert_eq!(run(&c, "SELECT count(*) AS n FROM t", json!([])).await.unwrap().rows, vec![json!([0])]);
}

#[tokio::test]
async fn drop_removes_the_table_and_limits_truncate_results() {
    let dir = tempfile::tempdir().unwrap();
    let c = catalog(&dir);
    run(&c, "CREATE TABLE t (x INTEGER)", json!([])).await.unwrap();
    let req = Request { query: "INSERT INTO t VALUES ($1)".into(), params_batch: Some((0..10).map(|i| vec![json!(i)]).collect()), ..Default::default() };
    execute(&c, Some("ws"), req, None).await.unwrap();
    let few = execute(&c, Some("ws"), Request { query: "SELECT x FROM t ORDER BY x".into(), max_rows: Some(4), ..Default::default() }, None).await.unwrap();
    assert!(few.truncated);
    assert_eq!(few.row_count, 4);
    // Tables of a workspace are listed; dropped ones are gone.
    assert_eq!(c.tables(Some("ws")).await.unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["t"]);
    run(&c, "DROP TABLE t", json!([])).await.unwrap();
    run(&c, "DROP TABLE IF EXISTS t", json!([])).await.unwrap();
    assert!(!dir.path().join("ws/t").exists());
    assert!(matches!(run(&c, "SELECT * FROM t", json!([])).await.unwrap_err(), Error::NotFound(_)));
}
