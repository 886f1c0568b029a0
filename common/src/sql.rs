//! SQL statements in the Postgres spelling over tables named within a
//! workspace: what `POST /workspaces/{ws}/tables/query`, the gRPC
//! `TableService.Execute` and `sluice sql` run.
//!
//! - `CREATE TABLE [IF NOT EXISTS] "ws"."t" (id BIGSERIAL PRIMARY KEY,
//!   filename TEXT, metadata JSONB) [USING ...]`
//! - `INSERT INTO "ws"."t" (cols) VALUES ($1, $2::jsonb), ...`: `$n`
//!   parameters, literals, casts and `now()`; a `params_batch` runs the
//!   statement once per parameter set, every row in one commit.
//! - `SELECT ...`: DataFusion over Lance.
//! - `DELETE FROM t [WHERE ...]`, `DROP TABLE [IF EXISTS] t`.
//!
//! Parameters are values, never text: SELECT and DELETE bind them into
//! DataFusion plans, INSERT into the rows.
//!
//! A workspace is a directory under the storage root: table `"ws"."t"`
//! lives at `<root>/ws/t`; an unqualified name is in the request's
//! workspace (or directly under the root when there is none).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Expr, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::StreamExt;
use lance_core::datatypes::BlobHandling;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::insert::{self, field_of, insert_rows, ColumnDef, InsertRequest, PRIMARY_KEY, SERIAL};
use crate::storage::{complete_options, TableLocation};
use crate::table::TableHandle;
use crate::{pb, Error, Result};

/// Longest a query may run, and the default.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows a result holds unless the request asks for fewer (or more, up to
/// [`MAX_ROWS_LIMIT`]).
pub const DEFAULT_MAX_ROWS: usize = 100_000;
pub const MAX_ROWS_LIMIT: usize = 1_000_000;
/// A result stops growing at this many bytes of JSON (marked truncated).
pub const MAX_RESULT_BYTES: usize = 64 << 20;

/// One statement and its parameters, as the HTTP body carries them.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Request {
    pub query: String,
    /// Values of `$1`, `$2`, ...
    #[serde(default)]
    pub params: Vec<Value>,
    /// The statement once per parameter set (INSERT), all in one commit.
    #[serde(default)]
    pub params_batch: Option<Vec<Vec<Value>>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_rows: Option<usize>,
}

/// What a statement did: for SELECT the columns and rows (each a JSON
/// array in column order), for writes the rows written and the version.
#[derive(Debug, Default, Serialize)]
pub struct Response {
    pub command: String,
    pub columns: Vec<String>,
    /// Each row a JSON array, in column order.
    pub rows: Vec<Value>,
    pub row_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Response {
    fn command(command: &str) -> Self {
        Self { command: command.into(), ..Default::default() }
    }

    /// The protocol form (rows as JSON array text).
    pub fn into_pb(self) -> pb::ExecuteResponse {
        pb::ExecuteResponse {
            command: self.command,
            columns: self.columns,
            rows: self.rows.into_iter().map(|r| r.to_string()).collect(),
            row_count: self.row_count,
            version: self.version.unwrap_or_default(),
            replayed: self.replayed,
            truncated: self.truncated,
        }
    }
}

/// Where tables named in statements live: `<root>/<workspace>/<table>`.
#[derive(Debug, Clone)]
pub struct Catalog {
    root: String,
    options: HashMap<String, String>,
}

/// Is `name` usable as one path segment (a workspace or table name)?
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Catalog {
    /// `root`: a URI (`s3://bucket/lake`) or a local directory.
    pub fn new(root: &str, options: HashMap<String, String>) -> Result<Self> {
        let location = TableLocation::new(root, HashMap::new())?;
        Ok(Self { root: location.uri, options })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The location of `table` in `workspace` (or directly under the root).
    pub fn location(&self, workspace: Option<&str>, table: &str) -> Result<TableLocation> {
        let bad = |what: &str, n: &str| {
            Error::InvalidInput(format!("{what} name `{n}`: letters, digits, '-', '_' and '.' only (128 at most)"))
        };
        let mut uri = self.root.trim_end_matches('/').to_string();
        if let Some(ws) = workspace {
            if !valid_name(ws) {
                return Err(bad("workspace", ws));
            }
            uri = format!("{uri}/{ws}");
        }
        if !valid_name(table) {
            return Err(bad("table", table));
        }
        uri = format!("{uri}/{table}");
        let mut options = self.options.clone();
        complete_options(&uri, &mut options);
        TableLocation::new(&uri, options)
    }

    pub fn handle(&self, workspace: Option<&str>, table: &str) -> Result<TableHandle> {
        Ok(TableHandle::new(self.location(workspace, table)?, 32))
    }

    /// The tables of a workspace (or directly under the root).
    pub async fn tables(&self, workspace: Option<&str>) -> Result<Vec<crate::describe::TableInfo>> {
        let root = match workspace {
            Some(ws) if !valid_name(ws) => return Err(Error::InvalidInput(format!("workspace name `{ws}` is not valid"))),
            Some(ws) => format!("{}/{ws}", self.root.trim_end_matches('/')),
            None => self.root.clone(),
        };
        let mut options = self.options.clone();
        complete_options(&root, &mut options);
        let location = TableLocation::new(&root, options)?;
        crate::describe::list_tables(Some(&location), &[]).await
    }
}

/// Run one statement. `workspace` holds unqualified table names; `key`
/// makes a retried INSERT land once.
pub async fn execute(catalog: &Catalog, workspace: Option<&str>, req: Request, key: Option<String>) -> Result<Response> {
    let statement = parse(&req.query)?;
    let sets = match req.params_batch {
        Some(_) if !req.params.is_empty() => return Err(invalid("give params or params_batch, not both")),
        Some(batch) if batch.is_empty() => return Err(invalid("params_batch is empty")),
        Some(batch) => batch,
        None => vec![req.params],
    };
    let one_set = |what: &str| {
        if sets.len() > 1 {
            Err(invalid(format!("params_batch is for INSERT, not {what}")))
        } else {
            Ok(sets[0].clone())
        }
    };
    match statement {
        Statement::CreateTable(create) => {
            one_set("CREATE TABLE")?;
            create_table(catalog, workspace, create).await
        }
        Statement::Insert(insert) => insert_values(catalog, workspace, insert, &sets, key).await,
        statement @ (Statement::Query(_) | Statement::Explain { .. }) => {
            let params = one_set("SELECT")?;
            let timeout = req.timeout_ms.map_or(MAX_TIMEOUT, Duration::from_millis).min(MAX_TIMEOUT);
            let max_rows = req.max_rows.unwrap_or(DEFAULT_MAX_ROWS).clamp(1, MAX_ROWS_LIMIT);
            tokio::time::timeout(timeout, select(catalog, workspace, statement, params, max_rows))
                .await
                .map_err(|_| Error::Timeout(format!("query timed out after {timeout:?}")))?
        }
        Statement::Delete(delete) => {
            let params = one_set("DELETE")?;
            delete_rows(catalog, workspace, delete, &params).await
        }
        Statement::Drop { object_type: ast::ObjectType::Table, if_exists, names, .. } => {
            one_set("DROP TABLE")?;
            drop_tables(catalog, workspace, &names, if_exists).await
        }
        _ => {
            let verb = req.query.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            Err(invalid(format!(
                "{verb} statements are not supported: use CREATE TABLE, INSERT, SELECT, DELETE or DROP TABLE"
            )))
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

/// Parse exactly one statement. `CREATE TABLE ... USING <method>` (the
/// table access method, as in `USING deeplake`) is accepted and ignored.
fn parse(sql: &str) -> Result<Statement> {
    let syntax = |e: datafusion::sql::sqlparser::parser::ParserError| invalid(format!("SQL syntax: {e}"));
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    if parser.peek_token().token == Token::EOF {
        return Err(invalid("the query is empty"));
    }
    let statement = parser.parse_statement().map_err(syntax)?;
    if matches!(statement, Statement::CreateTable(_)) && parser.parse_keyword(Keyword::USING) {
        parser.parse_identifier().map_err(syntax)?;
    }
    while parser.consume_token(&Token::SemiColon) {}
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(invalid(format!("one statement per request; unexpected `{}` after it", next.token)));
    }
    Ok(statement)
}

/// An identifier as Postgres reads it: unquoted names fold to lower case.
fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// `t` (in the request's workspace) or `"ws"."t"`.
fn table_ref(name: &ast::ObjectName, workspace: Option<&str>) -> Result<(Option<String>, String)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(ident).ok_or_else(|| invalid(format!("table name {name} is not a plain name"))))
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [table] => Ok((workspace.map(String::from), table.clone())),
        [ws, table] => Ok((Some(ws.clone()), table.clone())),
        _ => Err(invalid(format!("table name {name}: give `table` or `\"workspace\".\"table\"`"))),
    }
}

fn display(workspace: &Option<String>, table: &str) -> String {
    match workspace {
        Some(ws) => format!("\"{ws}\".\"{table}\""),
        None => format!("\"{table}\""),
    }
}

async fn open_existing(handle: &TableHandle, shown: &str) -> Result<lance::Dataset> {
    match handle.open().await {
        Err(Error::Lance(lance::Error::DatasetNotFound { .. })) => Err(Error::NotFound(format!("table {shown} does not exist"))),
        other => other,
    }
}

/// A Postgres column type as the insert library names it, and whether it
/// is a serial (server-assigned) column.
fn column_type(data_type: &ast::DataType) -> Result<(&'static str, bool)> {
    let text = data_type.to_string().to_ascii_uppercase();
    let base = text.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "BIGSERIAL" | "SERIAL8" => ("int64", true),
        "SERIAL" | "SERIAL4" => ("int32", true),
        "SMALLSERIAL" | "SERIAL2" => ("int16", true),
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "CHAR" | "CHARACTER" | "BPCHAR" | "UUID" | "STRING" | "CITEXT" => ("string", false),
        "BIGINT" | "INT8" => ("int64", false),
        "INTEGER" | "INT" | "INT4" => ("int32", false),
        "SMALLINT" | "INT2" => ("int16", false),
        "DOUBLE PRECISION" | "FLOAT8" | "FLOAT" | "DOUBLE" => ("float64", false),
        "REAL" | "FLOAT4" => ("float32", false),
        "BOOLEAN" | "BOOL" => ("bool", false),
        t if t.starts_with("TIMESTAMP") => ("timestamp", false),
        "DATE" => ("date", false),
        "JSON" | "JSONB" => ("json", false),
        "BYTEA" | "BLOB" | "BINARY" | "VARBINARY" => ("binary", false),
        _ => {
            return Err(invalid(format!(
                "column type {text} is not supported (TEXT, VARCHAR, BIGINT, INTEGER, SMALLINT, DOUBLE PRECISION, \
                 REAL, BOOLEAN, TIMESTAMP, TIMESTAMPTZ, DATE, JSON, JSONB, BYTEA, SERIAL, BIGSERIAL)"
            )))
        }
    })
}

async fn create_table(catalog: &Catalog, workspace: Option<&str>, create: ast::CreateTable) -> Result<Response> {
    if create.query.is_some() || create.like.is_some() || create.clone.is_some() {
        return Err(invalid("CREATE TABLE ... AS, LIKE and CLONE are not supported: give the columns"));
    }
    let (ws, name) = table_ref(&create.name, workspace)?;
    let shown = display(&ws, &name);
    let mut primary: Vec<String> = Vec::new();
    for constraint in &create.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => primary.extend(pk.columns.iter().map(|c| c.column.expr.to_string().to_lowercase())),
            // Recorded nowhere, enforced nowhere: accepted as Postgres tools write it.
            ast::TableConstraint::Unique(_) => {}
            other => return Err(invalid(format!("table constraint `{other}` is not supported"))),
        }
    }
    let mut fields = Vec::with_capacity(create.columns.len());
    for column in &create.columns {
        let name = ident(&column.name);
        let (ty, serial) = column_type(&column.data_type)?;
        let mut is_primary = primary.contains(&name);
        let mut required = serial || is_primary;
        for option in &column.options {
            match &option.option {
                ast::ColumnOption::NotNull => required = true,
                ast::ColumnOption::Null => {}
                ast::ColumnOption::PrimaryKey(_) => {
                    is_primary = true;
                    required = true;
                }
                ast::ColumnOption::Unique(_) => {}
                ast::ColumnOption::Default(_) => {
                    return Err(invalid(format!("column `{name}`: DEFAULT is not supported (SERIAL columns fill themselves)")))
                }
                other => return Err(invalid(format!("column `{name}`: `{other}` is not supported"))),
            }
        }
        let mut field = field_of(&ColumnDef { name: name.clone(), ty: ty.into(), required })?;
        let mut metadata = field.metadata().clone();
        if serial {
            metadata.insert(SERIAL.into(), "true".into());
        }
        if is_primary {
            metadata.insert(PRIMARY_KEY.into(), "true".into());
        }
        field = field.with_metadata(metadata);
        fields.push(field);
    }
    if fields.is_empty() {
        return Err(invalid("a table needs at least one column"));
    }
    let handle = catalog.handle(ws.as_deref(), &name)?;
    let exists = || {
        if create.if_not_exists {
            Ok(Response::command("CREATE TABLE"))
        } else {
            Err(Error::Conflict(format!("table {shown} already exists")))
        }
    };
    match handle.open().await {
        Ok(_) => exists(),
        Err(Error::Lance(lance::Error::DatasetNotFound { .. })) => {
            let (ds, created) = insert::create_table(&handle, fields).await?;
            if !created {
                return exists();
            }
            tracing::info!(table = %handle.location.uri, "table created");
            Ok(Response { version: Some(ds.version().version), ..Response::command("CREATE TABLE") })
        }
        Err(e) => Err(e),
    }
}

/// A VALUES entry: a value, or DEFAULT (left out of the row).
enum Cell {
    Value(Value),
    Default,
}

async fn insert_values(
    catalog: &Catalog,
    workspace: Option<&str>,
    insert: ast::Insert,
    sets: &[Vec<Value>],
    key: Option<String>,
) -> Result<Response> {
    if insert.on.is_some() || insert.returning.is_some() || insert.or.is_some() || insert.overwrite {
        return Err(invalid("INSERT takes plain VALUES: ON CONFLICT, RETURNING and OR REPLACE are not supported"));
    }
    let ast::TableObject::TableName(name) = &insert.table else {
        return Err(invalid("INSERT INTO a table function is not supported"));
    };
    let (ws, table) = table_ref(name, workspace)?;
    let shown = display(&ws, &table);
    let handle = catalog.handle(ws.as_deref(), &table)?;
    let ds = open_existing(&handle, &shown).await?;
    let columns: Vec<String> = if insert.columns.is_empty() {
        insert::insert_schema(&ds).fields().iter().map(|f| f.name().clone()).collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| c.0.last().and_then(|p| p.as_ident()).map(ident).ok_or_else(|| invalid(format!("column {c}"))))
            .collect::<Result<_>>()?
    };
    drop(ds);
    let values = match insert.source.as_deref().map(|q| q.body.as_ref()) {
        Some(ast::SetExpr::Values(v)) => &v.rows,
        _ => return Err(invalid("INSERT takes VALUES (INSERT ... SELECT is not supported)")),
    };
    let mut rows = Vec::with_capacity(values.len() * sets.len());
    for (set_index, params) in sets.iter().enumerate() {
        for row in values.iter().map(|r| &r.content) {
            if row.len() != columns.len() {
                return Err(invalid(format!("a VALUES row has {} values for {} columns", row.len(), columns.len())));
            }
            let mut out = Map::with_capacity(row.len());
            for (column, expr) in columns.iter().zip(row) {
                let at = |e: Error| if sets.len() > 1 { invalid(format!("parameter set {set_index}: {}", plain(&e))) } else { e };
                if let Cell::Value(v) = eval(expr, params).map_err(at)? {
                    out.insert(column.clone(), v);
                }
            }
            rows.push(out);
        }
    }
    let done = insert_rows(&handle, InsertRequest { rows, create_columns: Vec::new(), idempotency_key: key }).await?;
    Ok(Response { row_count: done.rows_inserted, version: Some(done.version), replayed: done.replayed, ..Response::command("INSERT") })
}

/// An error's message without the kind's prefix.
fn plain(e: &Error) -> String {
    match e {
        Error::InvalidInput(m) => m.clone(),
        other => other.to_string(),
    }
}

fn param(id: &str, params: &[Value]) -> Result<Value> {
    let n: usize = id
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(format!("parameter {id}: use $1, $2, ...")))?;
    params.get(n - 1).cloned().ok_or_else(|| invalid(format!("the statement uses {id} but {} parameters were given", params.len())))
}

fn eval(expr: &Expr, params: &[Value]) -> Result<Cell> {
    use ast::Value as V;
    Ok(Cell::Value(match expr {
        Expr::Value(v) => match &v.value {
            V::Placeholder(id) => param(id, params)?,
            V::SingleQuotedString(s) | V::EscapedStringLiteral(s) | V::NationalStringLiteral(s) => Value::String(s.clone()),
            V::DollarQuotedString(d) => Value::String(d.value.clone()),
            V::Number(n, _) => Value::Number(serde_json::from_str(n).map_err(|_| invalid(format!("bad number {n}")))?),
            V::Boolean(b) => Value::Bool(*b),
            V::Null => Value::Null,
            other => return Err(invalid(format!("value `{other}` is not supported in VALUES"))),
        },
        Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") => return Ok(Cell::Default),
        Expr::Nested(inner) => return eval(inner, params),
        Expr::UnaryOp { op: op @ (ast::UnaryOperator::Minus | ast::UnaryOperator::Plus), expr } => {
            let Cell::Value(Value::Number(n)) = eval(expr, params)? else {
                return Err(invalid(format!("`{op}` needs a number")));
            };
            match (op, n.as_i64(), n.as_f64()) {
                (ast::UnaryOperator::Plus, _, _) => Value::Number(n),
                (_, Some(i), _) => Value::from(i.checked_neg().ok_or_else(|| invalid("number out of range"))?),
                (_, None, Some(f)) => serde_json::Number::from_f64(-f).map(Value::Number).ok_or_else(|| invalid("bad number"))?,
                _ => return Err(invalid("number out of range")),
            }
        }
        Expr::Cast { expr, data_type, .. } => match eval(expr, params)? {
            Cell::Value(v) => cast(v, data_type)?,
            Cell::Default => return Err(invalid("DEFAULT cannot be cast")),
        },
        Expr::Function(f) if matches!(f.name.to_string().to_ascii_lowercase().as_str(), "now" | "current_timestamp" | "localtimestamp") => {
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
        other => return Err(invalid(format!("VALUES may hold values, $n parameters, casts and now(), not `{other}`"))),
    }))
}

/// `value::type` as Postgres would read it, as far as a JSON row can tell.
fn cast(value: Value, data_type: &ast::DataType) -> Result<Value> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let (target, _) = column_type(data_type)?;
    let bad = |v: &Value| invalid(format!("invalid input for type {}: {v}", data_type.to_string().to_lowercase()));
    Ok(match target {
        "json" => match value {
            Value::String(s) => serde_json::from_str(&s).map_err(|e| invalid(format!("invalid input for type json: {e}")))?,
            other => other,
        },
        "string" => match value {
            Value::String(s) => Value::String(s),
            other => Value::String(other.to_string()),
        },
        "int64" | "int32" | "int16" => match &value {
            Value::Number(n) if n.as_i64().is_some() => value,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.2e18) => Value::from(n.as_f64().unwrap_or(0.0) as i64),
            Value::String(s) => Value::from(s.trim().parse::<i64>().map_err(|_| bad(&value))?),
            _ => return Err(bad(&value)),
        },
        "float64" | "float32" => match &value {
            Value::Number(_) => value,
            Value::String(s) => s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).ok_or_else(|| bad(&value))?,
            _ => return Err(bad(&value)),
        },
        "bool" => match &value {
            Value::Bool(_) => value,
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "on" | "1" => Value::Bool(true),
                "false" | "f" | "no" | "n" | "off" | "0" => Value::Bool(false),
                _ => return Err(bad(&value)),
            },
            _ => return Err(bad(&value)),
        },
        "binary" => match &value {
            // Postgres' hex form `\x0a1b`; any other text is its bytes.
            Value::String(s) => match s.strip_prefix("\\x") {
                Some(hex) if hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Value::String(hex.to_string()),
                Some(_) => return Err(bad(&value)),
                None => Value::String(s.bytes().map(|b| format!("{b:02x}")).collect()),
            },
            _ => return Err(bad(&value)),
        },
        // Timestamps and dates stay text; the column's decoder reads them.
        _ => value,
    })
}

async fn select(catalog: &Catalog, workspace: Option<&str>, statement: Statement, params: Vec<Value>, max_rows: usize) -> Result<Response> {
    let ctx = SessionContext::new();
    lance_datafusion::udf::register_functions(&ctx);
    let statement = DFStatement::Statement(Box::new(statement));
    let references = ctx.state().resolve_table_references(&statement).map_err(user_error)?;
    for reference in references {
        let (ws, table) = match &reference {
            TableReference::Bare { table } => (workspace.map(String::from), table.to_string()),
            TableReference::Partial { schema, table } => (Some(schema.to_string()), table.to_string()),
            TableReference::Full { .. } => return Err(invalid(format!("table name {reference}: give `table` or `\"workspace\".\"table\"`"))),
        };
        let handle = catalog.handle(ws.as_deref(), &table)?;
        let ds = open_existing(&handle, &display(&ws, &table)).await?;
        let provider = lance::datafusion::LanceTableProvider::new(Arc::new(ds), false, false)
            .with_blob_handling(BlobHandling::AllDescriptions);
        if let TableReference::Partial { schema, .. } = &reference {
            let catalog = ctx.catalog("datafusion").ok_or_else(|| Error::Internal("no default catalog".into()))?;
            if catalog.schema(schema).is_none() {
                catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new())).map_err(user_error)?;
            }
        }
        ctx.register_table(reference.clone(), Arc::new(provider)).map_err(user_error)?;
    }
    let state = ctx.state();
    let plan = state.statement_to_plan(statement).await.map_err(user_error)?;
    let values: Vec<datafusion::scalar::ScalarValue> = params.iter().map(scalar).collect();
    let frame = DataFrame::new(state, plan).with_param_values(values).map_err(user_error)?;
    let columns: Vec<String> = frame.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut stream = frame.execute_stream().await.map_err(user_error)?;
    let mut response = Response { columns, ..Response::command("SELECT") };
    let mut bytes = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = lance_arrow::json::convert_lance_json_to_arrow(&batch.map_err(user_error)?)?;
        if response.rows.len() >= max_rows || bytes >= MAX_RESULT_BYTES {
            response.truncated |= batch.num_rows() > 0;
            if response.truncated {
                break;
            }
            continue;
        }
        let room = max_rows - response.rows.len();
        let take = batch.num_rows().min(room);
        for row in crate::query::json_array_rows(&batch.slice(0, take))? {
            bytes += row.len();
            response.rows.push(serde_json::from_str(&row)?);
            if bytes >= MAX_RESULT_BYTES {
                break;
            }
        }
        response.truncated |= take < batch.num_rows() || (bytes >= MAX_RESULT_BYTES && response.rows.len() < max_rows);
        if response.truncated {
            break;
        }
    }
    response.row_count = response.rows.len() as u64;
    Ok(response)
}

/// A parameter as a SQL value: numbers, text, booleans, null; JSON objects
/// and arrays as their text.
fn scalar(value: &Value) -> datafusion::scalar::ScalarValue {
    use datafusion::scalar::ScalarValue as S;
    match value {
        Value::Null => S::Null,
        Value::Bool(b) => S::Boolean(Some(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => S::Int64(Some(i)),
            (None, Some(f)) => S::Float64(Some(f)),
            _ => S::Utf8(Some(n.to_string())),
        },
        Value::String(s) => S::Utf8(Some(s.clone())),
        other => S::Utf8(Some(other.to_string())),
    }
}

/// Mistakes in a statement (planning, casts of bad values) are the user's;
/// storage and I/O failures are not.
fn user_error(e: DataFusionError) -> Error {
    match e.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => Error::Unavailable(format!("query failed: {e}")),
        DataFusionError::ResourcesExhausted(_) => Error::Busy(format!("query failed: {e}")),
        DataFusionError::Internal(_) => Error::Internal(format!("query failed: {e}")),
        _ => Error::InvalidInput(crate::query::concise_datafusion(&e)),
    }
}

async fn delete_rows(catalog: &Catalog, workspace: Option<&str>, delete: ast::Delete, params: &[Value]) -> Result<Response> {
    if delete.using.is_some() || delete.returning.is_some() || !delete.order_by.is_empty() || delete.limit.is_some() || !delete.tables.is_empty() {
        return Err(invalid("DELETE takes one table and a WHERE clause (USING, RETURNING, ORDER BY and LIMIT are not supported)"));
    }
    let tables = match &delete.from {
        ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
    };
    let name = match tables.as_slice() {
        [ast::TableWithJoins { relation: ast::TableFactor::Table { name, .. }, joins }] if joins.is_empty() => name,
        _ => return Err(invalid("DELETE takes exactly one table")),
    };
    let (ws, table) = table_ref(name, workspace)?;
    let handle = catalog.handle(ws.as_deref(), &table)?;
    let ds = Arc::new(open_existing(&handle, &display(&ws, &table)).await?);
    let builder = match delete.selection {
        Some(selection) => lance::dataset::DeleteBuilder::from_expr(ds.clone(), predicate(&ds, &table, selection, params).await?),
        None => lance::dataset::DeleteBuilder::new(ds.clone(), "true"),
    };
    let done = builder.execute().await.map_err(|e| match e {
        lance::Error::InvalidInput { .. } => invalid(Error::Lance(e).to_string()),
        other => Error::Lance(other),
    })?;
    tracing::info!(table = %handle.location.uri, rows = done.num_deleted_rows, "rows deleted");
    Ok(Response {
        row_count: done.num_deleted_rows,
        version: Some(done.new_dataset.version().version),
        ..Response::command("DELETE")
    })
}

/// A WHERE clause as a DataFusion expression over the table's columns,
/// its parameters bound as values: planned as `SELECT * FROM t WHERE ...`
/// and taken from the plan's filter, so no value is ever SQL text.
async fn predicate(ds: &Arc<lance::Dataset>, table: &str, selection: Expr, params: &[Value]) -> Result<datafusion::prelude::Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::LogicalPlan;
    let ctx = SessionContext::new();
    lance_datafusion::udf::register_functions(&ctx);
    let provider = lance::datafusion::LanceTableProvider::new(ds.clone(), false, false);
    ctx.register_table(TableReference::bare(table), Arc::new(provider)).map_err(user_error)?;
    // `table` passed `valid_name`: no quote can end the identifier.
    let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT * FROM \"{table}\" WHERE true"))
        .map_err(|e| Error::Internal(e.to_string()))?
        .pop()
        .ok_or_else(|| Error::Internal("no statement".into()))?;
    if let Statement::Query(query) = &mut statement {
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            select.selection = Some(selection);
        }
    }
    let plan = ctx.state().statement_to_plan(DFStatement::Statement(Box::new(statement))).await.map_err(user_error)?;
    let values: Vec<datafusion::scalar::ScalarValue> = params.iter().map(scalar).collect();
    let plan = plan.with_param_values(values).map_err(user_error)?;
    let mut found = None;
    plan.apply(|node| {
        if let LogicalPlan::Filter(filter) = node {
            found = Some(filter.predicate.clone());
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(user_error)?;
    let predicate = found.ok_or_else(|| invalid("the WHERE clause did not plan to a filter"))?;
    // Lance resolves columns by name.
    let unqualified = predicate
        .transform(|e| match e {
            datafusion::prelude::Expr::Column(c) => Ok(Transformed::yes(datafusion::prelude::Expr::Column(datafusion::common::Column::new_unqualified(c.name)))),
            other => Ok(Transformed::no(other)),
        })
        .map_err(user_error)?;
    Ok(unqualified.data)
}

async fn drop_tables(catalog: &Catalog, workspace: Option<&str>, names: &[ast::ObjectName], if_exists: bool) -> Result<Response> {
    let mut handles = Vec::new();
    for name in names {
        let (ws, table) = table_ref(name, workspace)?;
        let handle = catalog.handle(ws.as_deref(), &table)?;
        match open_existing(&handle, &display(&ws, &table)).await {
            Ok(_) => handles.push(handle),
            Err(Error::NotFound(_)) if if_exists => {}
            Err(e) => return Err(e),
        }
    }
    for handle in handles {
        crate::table::remove_table(&handle.location).await?;
        insert::forget_table(&handle.location.uri);
        tracing::info!(table = %handle.location.uri, "table dropped");
    }
    Ok(Response::command("DROP TABLE"))
}

/// A result's rows as JSON objects by column name.
pub fn rows_as_objects(response: &Response) -> Vec<Map<String, Value>> {
    response
        .rows
        .iter()
        .map(|row| response.columns.iter().cloned().zip(row.as_array().cloned().unwrap_or_default()).collect())
        .collect()
}

#[cfg(test)]
mod tests;
