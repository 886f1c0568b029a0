//! Batch inserts of rows (metadata, labels, anything small) into a table:
//! rows are JSON objects with columns by name, appended in one atomic
//! commit. A table can be created with given columns on first insert.
//!
//! Idempotency: a request with a key commits under a commit id derived from
//! the table and the key. Before the first attempt, a marker
//! `_sluice/inserts/<hash of key>.json` records the key, a fingerprint of
//! the rows and the table version the attempt started from; once the
//! commit lands it records the version too. A retry finds the marker and
//! either answers with the recorded version or searches the versions
//! written since the attempt started for the commit id (an attempt that
//! died after committing but before updating the marker). Inserts into one
//! table are serialized within a process (the coordinator), so two
//! concurrent requests with one key cannot both commit.

use std::collections::{BTreeMap, HashMap};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lance::dataset::{InsertBuilder, WriteMode};
use lance::Dataset;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::table::{commit_append, discard_fragments, prop, TableHandle};
use crate::{pb, Error, Result};


/// Transaction property holding an insert's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "sluice.idempotency_key";

/// A column to create, as users write it: a name, a type name (SQL or
/// Arrow spelling, see [`field_of`]) and whether it is NOT NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: String,
    pub required: bool,
}

impl From<pb::ColumnDef> for ColumnDef {
    fn from(c: pb::ColumnDef) -> Self {
        ColumnDef { name: c.name, ty: c.r#type, required: c.required }
    }
}

impl From<ColumnDef> for pb::ColumnDef {
    fn from(c: ColumnDef) -> Self {
        pb::ColumnDef { name: c.name, r#type: c.ty, required: c.required }
    }
}

/// What to insert: rows and, optionally, the columns to create the table with.
#[derive(Debug, Default, Clone)]
pub struct InsertRequest {
    pub rows: Vec<Map<String, Value>>,
    pub create_columns: Vec<ColumnDef>,
    pub idempotency_key: Option<String>,
}

/// Parse column definitions written SQL-style:
/// `filename TEXT NOT NULL, metadata JSONB, size BIGINT`.
pub fn parse_columns(spec: &str) -> Result<Vec<ColumnDef>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, ty, rest) = match words.as_slice() {
            [name, ty, rest @ ..] => (*name, *ty, rest),
            _ => return Err(Error::InvalidInput(format!("column `{part}`: expected NAME TYPE [NOT NULL]"))),
        };
        let required = match rest.iter().map(|w| w.to_ascii_lowercase()).collect::<Vec<_>>().join(" ").as_str() {
            "" | "null" => false,
            "not null" => true,
            other => return Err(Error::InvalidInput(format!("column `{name}`: unexpected `{other}` (only NOT NULL)"))),
        };
        let def = ColumnDef { name: name.trim_matches('"').to_string(), ty: ty.to_string(), required };
        field_of(&def)?;
        out.push(def);
    }
    Ok(out)
}

/// The Arrow field a column definition stands for.
pub fn field_of(def: &ColumnDef) -> Result<Field> {
    let name = def.name.trim();
    if name.is_empty() || name.starts_with('_') || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(Error::InvalidInput(format!(
            "column name `{name}`: letters, digits and '_' only, not starting with '_'"
        )));
    }
    let t = def.ty.trim().to_ascii_lowercase();
    let data_type = match t.as_str() {
        "string" | "text" | "utf8" | "varchar" => DataType::Utf8,
        "int64" | "bigint" | "long" | "int8" => DataType::Int64,
        "int32" | "int" | "integer" | "int4" => DataType::Int32,
        "int16" | "smallint" | "int2" => DataType::Int16,
        "float64" | "double" | "double precision" | "float8" | "float" => DataType::Float64,
        "float32" | "real" | "float4" => DataType::Float32,
        "bool" | "boolean" => DataType::Boolean,
        "timestamp" | "timestamptz" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        "date" => DataType::Date32,
        "binary" | "bytes" | "bytea" => DataType::Binary,
        "json" | "jsonb" => return Ok(crate::schema::json_field(name, !def.required)),
        other => {
            return Err(Error::InvalidInput(format!(
                "column `{name}`: unknown type `{other}` (string, int64, int32, int16, float64, float32, bool, timestamp, date, json, binary)"
            )))
        }
    };
    Ok(Field::new(name, data_type, !def.required))
}

/// A column's type as users name it.
pub fn type_name(field: &Field) -> String {
    let ext = field.metadata().get(crate::schema::ARROW_EXT_KEY).map(String::as_str);
    if crate::schema::is_arrow_json(field) || lance_arrow::json::is_json_field(field) {
        return "json".into();
    }
    if field.metadata().contains_key(lance_arrow::BLOB_META_KEY) || ext == Some(lance_arrow::BLOB_V2_EXT_NAME) {
        return "blob".into();
    }
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int64 => "int64".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int16 => "int16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Boolean => "bool".into(),
        DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if tz.as_ref() == "UTC" => "timestamp".into(),
        DataType::Date32 => "date".into(),
        DataType::Binary | DataType::LargeBinary => "binary".into(),
        other => other.to_string(),
    }
}

/// The table's columns as inserts see them: JSON columns as JSON text.
pub fn insert_schema(ds: &Dataset) -> SchemaRef {
    let schema: Schema = ds.schema().into();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| if lance_arrow::json::is_json_field(f) { lance_arrow::json::lance_json_to_arrow_json(f) } else { f.as_ref().clone() })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Rows to a batch of the table's schema, with a clear error naming the
/// first bad row and column.
pub fn rows_to_batch(schema: &SchemaRef, rows: &[Map<String, Value>]) -> Result<RecordBatch> {
    let mut prepared = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut out = Map::with_capacity(row.len());
        for (name, value) in row {
            let Ok(field) = schema.field_with_name(name) else {
                let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::InvalidInput(format!(
                    "row {i}: unknown column `{name}` (the table has: {})",
                    known.join(", ")
                )));
            };
            let value = if crate::schema::is_arrow_json(field) && !value.is_null() { Value::String(json_text(value)) } else { value.clone() };
            out.insert(name.clone(), value);
        }
        for field in schema.fields().iter().filter(|f| !f.is_nullable()) {
            if out.get(field.name()).is_none_or(Value::is_null) {
                return Err(Error::InvalidInput(format!("row {i}: column `{}` is required", field.name())));
            }
        }
        prepared.push(out);
    }
    match decode(schema, &prepared) {
        Ok(batch) => Ok(batch),
        Err(e) => {
            // Find the row at fault (only on this error path).
            for (i, row) in prepared.iter().enumerate() {
                if let Err(e) = decode(schema, std::slice::from_ref(row)) {
                    return Err(Error::InvalidInput(format!("row {i}: {}", plain(&e))));
                }
            }
            Err(Error::InvalidInput(plain(&e)))
        }
    }
}

fn plain(e: &arrow_schema::ArrowError) -> String {
    e.to_string().trim_start_matches("Json error: ").to_string()
}

fn decode(schema: &SchemaRef, rows: &[Map<String, Value>]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone()).with_strict_mode(true).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// A JSON column's value as JSON text. A string that holds a JSON object or
/// array (metadata sent pre-encoded) is taken as that object or array.
pub fn json_text(value: &Value) -> String {
    if let Value::String(s) = value {
        let t = s.trim_start();
        if t.starts_with('{') || t.starts_with('[') {
            if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                return parsed.to_string();
            }
        }
    }
    value.to_string()
}

/// A protobuf `Struct` row as a JSON object. Numbers that are whole (and
/// exact in a double) become integers.
pub fn struct_to_json(s: prost_types::Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, value_to_json(v))).collect()
}

/// A protobuf `Value` as JSON (whole numbers as integers, see [`struct_to_json`]).
pub fn value_to_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

/// A JSON object as a protobuf `Struct` (the inverse of [`struct_to_json`]).
pub fn json_to_struct(values: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: values.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
}

/// A JSON value as a protobuf `Value`. Integers beyond 2^53, which a
/// protobuf number cannot hold exactly, keep their digits as text.
pub fn json_to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.unsigned_abs() > (1 << 53) => Kind::StringValue(i.to_string()),
            _ => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(json_to_value).collect() }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Parse JSON text rows (one object each).
pub fn parse_json_rows<'a>(rows: impl IntoIterator<Item = &'a str>) -> Result<Vec<Map<String, Value>>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, text)| match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::InvalidInput(format!("row {i}: not a JSON object"))),
            Err(e) => Err(Error::InvalidInput(format!("row {i}: bad JSON: {e}"))),
        })
        .collect()
}

/// The record of an idempotent insert, beside the table.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    key: String,
    fingerprint: String,
    /// The table version the first attempt started from.
    after_version: u64,
    /// The version the rows landed in, once known.
    version: Option<u64>,
    rows: u64,
}

struct Markers {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl Markers {
    fn new(handle: &TableHandle) -> Result<Self> {
        let (store, table) = handle.location.object_store()?;
        Ok(Self { store, root: table.join("_sluice").join("inserts") })
    }

    fn path(&self, key: &str) -> Path {
        self.root.clone().join(format!("{}.json", blake3::hash(key.as_bytes()).to_hex()).as_str())
    }

    async fn get(&self, key: &str) -> Result<Option<Marker>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, marker: &Marker) -> Result<()> {
        self.store.put(&self.path(&marker.key), PutPayload::from(serde_json::to_vec(marker)?)).await?;
        Ok(())
    }
}

/// One insert at a time per table in this process.
fn table_lock(uri: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Mutex::default).lock().entry(uri.to_string()).or_default().clone()
}

/// Open the table, creating it with `columns` when absent. Given columns
/// must match an existing table's.
async fn open_or_create(handle: &TableHandle, columns: &[ColumnDef]) -> Result<(Dataset, bool)> {
    match handle.open().await {
        Ok(ds) => {
            let schema = insert_schema(&ds);
            for def in columns {
                let want = field_of(def)?;
                let have = schema.field_with_name(&def.name).map_err(|_| {
                    Error::InvalidInput(format!("table {} exists and has no column `{}`", handle.location.uri, def.name))
                })?;
                if type_name(have) != type_name(&want) || have.is_nullable() != want.is_nullable() {
                    return Err(Error::InvalidInput(format!(
                        "table {} exists with column `{}` {}{}, not {}{}",
                        handle.location.uri,
                        def.name,
                        type_name(have),
                        if have.is_nullable() { "" } else { " NOT NULL" },
                        type_name(&want),
                        if want.is_nullable() { "" } else { " NOT NULL" },
                    )));
                }
            }
            Ok((ds, false))
        }
        Err(Error::Lance(lance::Error::DatasetNotFound { .. })) if !columns.is_empty() => {
            let fields = columns.iter().map(field_of).collect::<Result<Vec<_>>>()?;
            create_table(handle, fields).await
        }
        Err(Error::Lance(lance::Error::DatasetNotFound { .. })) => Err(Error::NotFound(format!(
            "table {} does not exist; give its columns to create it",
            handle.location.uri
        ))),
        Err(e) => Err(e),
    }
}

/// Create the table with `fields`; `false` when someone else created it
/// first (the table is then opened as it is).
pub async fn create_table(handle: &TableHandle, fields: Vec<Field>) -> Result<(Dataset, bool)> {
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = fields.iter().find(|f| !names.insert(f.name().clone())) {
        return Err(Error::InvalidInput(format!("column `{}` is given twice", dup.name())));
    }
    let empty = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
    let params = handle.write_params(WriteMode::Create);
    match InsertBuilder::new(handle.location.uri.as_str()).with_params(&params).execute(vec![empty]).await {
        Ok(ds) => Ok((ds, true)),
        Err(lance::Error::DatasetAlreadyExists { .. }) => Ok((handle.open().await?, false)),
        Err(e) => Err(e.into()),
    }
}

/// Field metadata marking a column whose values the table assigns: unique,
/// increasing integers for rows that leave it out (SQL `SERIAL`).
pub const SERIAL: &str = "sluice:serial";
/// Field metadata recording a declared primary key (not enforced, except
/// that serial values are unique as assigned).
pub const PRIMARY_KEY: &str = "sluice:primary_key";
/// Transaction property: the next value of a serial column after a commit.
const SERIAL_NEXT: &str = "sluice.serial_next.";

/// Is `field` a serial column?
pub fn is_serial(field: &Field) -> bool {
    field.metadata().get(SERIAL).is_some_and(|v| v == "true")
}

/// Next values of serial columns per table, as this process left them
/// after its last commit (table URI → (version, column → next value)).
/// A table's serial state: the version it was read at, next value per column.
type SerialState = (u64, HashMap<String, i64>);

fn serial_cache() -> &'static Mutex<HashMap<String, SerialState>> {
    static CACHE: OnceLock<Mutex<HashMap<String, SerialState>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Forget what this process knows of a table's serial values (dropped).
pub fn forget_table(uri: &str) {
    serial_cache().lock().remove(uri);
}

/// The next value of each serial column of `ds`: known from this process's
/// last commit at this version, from the commit's transaction properties,
/// or else from the largest value in the table.
async fn next_serials(ds: &Dataset, uri: &str, serials: &[&Field]) -> Result<HashMap<String, i64>> {
    let version = ds.version().version;
    if let Some((v, next)) = serial_cache().lock().get(uri) {
        if *v == version && serials.iter().all(|f| next.contains_key(f.name())) {
            return Ok(next.clone());
        }
    }
    let props = ds.read_transaction_by_version(version).await.ok().flatten().and_then(|t| t.transaction_properties);
    let mut next = HashMap::new();
    for field in serials {
        let recorded = props.as_ref().and_then(|p| p.get(&format!("{SERIAL_NEXT}{}", field.name()))).and_then(|v| v.parse().ok());
        let value = match recorded {
            Some(v) => v,
            None => max_value(ds, field.name()).await?.map_or(1, |m| m + 1),
        };
        next.insert(field.name().clone(), value);
    }
    Ok(next)
}

async fn max_value(ds: &Dataset, column: &str) -> Result<Option<i64>> {
    use arrow_array::cast::AsArray;
    use futures::TryStreamExt;
    let mut scan = ds.scan();
    scan.project(&[column])?;
    let mut stream = scan.try_into_stream().await?;
    let mut max = None;
    while let Some(batch) = stream.try_next().await? {
        let values = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        if let Some(m) = arrow::compute::max(values.as_primitive::<arrow_array::types::Int64Type>()) {
            max = Some(max.map_or(m, |x: i64| x.max(m)));
        }
    }
    Ok(max)
}

/// Give rows that leave a serial column out (or null) its next values;
/// rows that give one move the counter past it.
fn assign_serials(rows: &mut [Map<String, Value>], next: &mut HashMap<String, i64>) {
    for row in rows {
        for (name, counter) in next.iter_mut() {
            match row.get(name).and_then(Value::as_i64) {
                Some(given) => *counter = (*counter).max(given.saturating_add(1)),
                None => {
                    row.insert(name.clone(), Value::from(*counter));
                    *counter += 1;
                }
            }
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inserted {
    pub table_uri: String,
    /// The table version holding the rows.
    pub version: u64,
    pub rows_inserted: u64,
    /// This request created the table.
    pub created: bool,
    /// The idempotency key had been applied before: nothing was inserted now.
    pub replayed: bool,
}

impl From<Inserted> for pb::InsertRowsResponse {
    fn from(i: Inserted) -> Self {
        pb::InsertRowsResponse { table_uri: i.table_uri, version: i.version, rows_inserted: i.rows_inserted, created: i.created, replayed: i.replayed }
    }
}

impl From<pb::InsertRowsResponse> for Inserted {
    fn from(r: pb::InsertRowsResponse) -> Self {
        Inserted { table_uri: r.table_uri, version: r.version, rows_inserted: r.rows_inserted, created: r.created, replayed: r.replayed }
    }
}

/// Append `req.rows` to the table in one commit (creating the table first
/// when asked), at most once per idempotency key.
pub async fn insert_rows(handle: &TableHandle, req: InsertRequest) -> Result<Inserted> {
    let uri = handle.location.uri.clone();
    let lock = table_lock(&uri);
    let _serialized = lock.lock().await;
    let (ds, created) = open_or_create(handle, &req.create_columns).await?;
    let mut response = Inserted { table_uri: uri.clone(), version: ds.version().version, created, ..Default::default() };
    let schema = insert_schema(&ds);
    let serials: Vec<&Field> = schema.fields().iter().map(|f| f.as_ref()).filter(|f| is_serial(f)).collect();
    let mut serial_next = HashMap::new();
    let mut assigned;
    let rows_in = if serials.is_empty() {
        &req.rows
    } else {
        serial_next = next_serials(&ds, &uri, &serials).await?;
        assigned = req.rows.clone();
        assign_serials(&mut assigned, &mut serial_next);
        &assigned
    };
    let batch = rows_to_batch(&schema, rows_in)?;
    let rows = batch.num_rows() as u64;

    let key = req.idempotency_key.filter(|k| !k.is_empty());
    let markers = key.as_ref().map(|_| Markers::new(handle)).transpose()?;
    let commit_id = match &key {
        Some(k) => crate::ids::insert_commit_id(&uri, k),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let mut known_version = ds.version().version;
    let fingerprint = key.as_ref().map(|_| fingerprint(&req.rows)).unwrap_or_default();
    if let (Some(key), Some(markers)) = (&key, &markers) {
        match markers.get(key).await? {
            Some(m) if m.fingerprint != fingerprint => {
                return Err(Error::InvalidInput(format!(
                    "idempotency key `{key}` was already used for different rows"
                )))
            }
            Some(m) => {
                let landed = match m.version {
                    Some(v) => Some(v),
                    None => crate::table::find_commit(&ds, &commit_id, m.after_version).await?,
                };
                if let Some(version) = landed {
                    if m.version.is_none() {
                        markers.put(&Marker { version: Some(version), ..m }).await?;
                    }
                    response.version = version;
                    response.replayed = true;
                    return Ok(response);
                }
                known_version = m.after_version;
            }
            None => {
                let marker = Marker { key: key.clone(), fingerprint: fingerprint.clone(), after_version: known_version, version: None, rows };
                markers.put(&marker).await?;
            }
        }
    }
    if rows == 0 {
        return Ok(response);
    }

    let fragments = handle.write_uncommitted(Arc::new(ds.clone()), batch).await?;
    let mut properties = HashMap::from([(prop::ROWS.to_string(), rows.to_string())]);
    if let Some(k) = &key {
        properties.insert(IDEMPOTENCY_KEY.to_string(), k.clone());
    }
    for (name, next) in &serial_next {
        properties.insert(format!("{SERIAL_NEXT}{name}"), next.to_string());
    }
    let committed = match commit_append(handle, &ds, &commit_id, known_version, fragments.clone(), properties).await {
        Ok(c) => c,
        Err(e) => {
            discard_fragments(&ds, &fragments).await;
            return Err(e);
        }
    };
    if !committed.fresh {
        // An earlier attempt landed after all; these files are not needed.
        discard_fragments(&ds, &fragments).await;
        response.replayed = true;
    } else {
        response.rows_inserted = rows;
    }
    response.version = committed.version;
    if committed.fresh && !serial_next.is_empty() {
        serial_cache().lock().insert(uri.clone(), (committed.version, serial_next));
    }
    if let (Some(key), Some(markers)) = (&key, &markers) {
        let marker = Marker { key: key.clone(), fingerprint, after_version: known_version, version: Some(committed.version), rows };
        if let Err(e) = markers.put(&marker).await {
            // The commit holds the key too: a retry still finds it.
            tracing::warn!(table = %uri, error = %e, "cannot record a finished insert");
        }
    }
    Ok(response)
}

/// Fingerprint of a request's rows, independent of key order in each row.
fn fingerprint(rows: &[Map<String, Value>]) -> String {
    let mut h = blake3::Hasher::new();
    for row in rows {
        let sorted: BTreeMap<&String, &Value> = row.iter().collect();
        serde_json::to_writer(&mut h, &sorted).expect("hashing cannot fail");
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TableLocation;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn handle(dir: &tempfile::TempDir) -> TableHandle {
        TableHandle::new(TableLocation::new(dir.path().join("meta").to_str().unwrap(), HashMap::new()).unwrap(), 4)
    }

    #[test]
    fn column_definitions_parse_sql_style() {
        let cols = parse_columns("filename TEXT NOT NULL, metadata JSONB, size bigint").unwrap();
        assert_eq!(cols.len(), 3);
        assert!(cols[0].required && !cols[1].required);
        assert_eq!(type_name(&field_of(&cols[1]).unwrap()), "json");
        assert_eq!(type_name(&field_of(&cols[2]).unwrap()), "int64");
        assert!(parse_columns("x widget").unwrap_err().to_string().contains("unknown type `widget`"));
        assert!(parse_columns("x text primary key").is_err());
        assert!(parse_columns("_rowid int").is_err());
    }

    #[tokio::test]
    async fn inserts_create_append_and_replay_once_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(&dir);
        let columns = parse_columns("filename text not null, metadata json, size int64").unwrap();
        // Absent table without columns: a clear error.
        let err = insert_rows(&h, InsertRequest { rows: vec![row(serde_json::json!({"filename": "a"}))], ..Default::default() })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");

        let rows = vec![
            row(serde_json::json!({"filename": "a.mp4", "metadata": {"fps": 30}, "size": 9_007_199_254_740_993_i64})),
            row(serde_json::json!({"filename": "b.mp4", "metadata": "{\"fps\": 60}"})),
        ];
        let req = InsertRequest { rows: rows.clone(), create_columns: columns.clone(), idempotency_key: Some("k1".into()) };
        let first = insert_rows(&h, req.clone()).await.unwrap();
        assert!(first.created && !first.replayed);
        assert_eq!(first.rows_inserted, 2);
        let again = insert_rows(&h, req.clone()).await.unwrap();
        assert!(again.replayed && !again.created);
        assert_eq!((again.rows_inserted, again.version), (0, first.version));

        // The same key for other rows is refused; no key appends again.
        let other = InsertRequest { rows: rows[..1].to_vec(), ..req.clone() };
        assert!(insert_rows(&h, other).await.unwrap_err().to_string().contains("already used"));
        let plain = insert_rows(&h, InsertRequest { rows: rows.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(plain.rows_inserted, 2);

        let ds = h.open().await.unwrap();
        assert_eq!(ds.count_rows(None).await.unwrap(), 4);
        let batches = crate::query::run_sql(
            &ds,
            "SELECT filename, json_get_int(metadata, 'fps') AS fps, size FROM meta WHERE json_get_int(metadata, 'fps') = 60",
            "meta",
            10,
            false,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
        let out = crate::query::json_rows(&batches).unwrap();
        assert_eq!(out, vec![r#"{"filename":"b.mp4","fps":60}"#; 2]);
        let big = crate::query::run_sql(&ds, "SELECT max(size) AS m FROM meta", "meta", 10, false, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(crate::query::json_rows(&big).unwrap(), vec![r#"{"m":9007199254740993}"#]);
    }

    #[tokio::test]
    async fn bad_rows_name_the_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(&dir);
        let create = parse_columns("filename text not null, size int64").unwrap();
        insert_rows(&h, InsertRequest { create_columns: create.clone(), ..Default::default() }).await.unwrap();
        let cases = [
            (serde_json::json!({"filename": "a", "color": "red"}), "row 1: unknown column `color`"),
            (serde_json::json!({"size": 3}), "row 1: column `filename` is required"),
            (serde_json::json!({"filename": "a", "size": "big"}), "row 1:"),
        ];
        for (bad, want) in cases {
            let rows = vec![row(serde_json::json!({"filename": "ok"})), row(bad)];
            let err = insert_rows(&h, InsertRequest { rows, ..Default::default() }).await.unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)) && err.to_string().contains(want), "{err}");
        }
        // A mismatching schema for an existing table is refused.
        let other = parse_columns("filename int64").unwrap();
        let err = insert_rows(&h, InsertRequest { create_columns: other, ..Default::default() }).await.unwrap_err();
        assert!(err.to_string().contains("exists with column `filename` string NOT NULL, not int64"), "{err}");
        assert_eq!(h.open().await.unwrap().count_rows(None).await.unwrap(), 0);
    }

    #[test]
    fn struct_numbers_become_integers_when_whole() {
        let s = prost_types::Struct {
            fields: [
                ("n".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(30.0)) }),
                ("x".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(0.5)) }),
            ]
            .into(),
        };
        assert_eq!(Value::Object(struct_to_json(s)), serde_json::json!({"n": 30, "x": 0.5}));
    }
}
