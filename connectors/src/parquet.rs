//! The Parquet sink: rows of any `Serialize` type become Arrow record batches
//! (schema traced from the type with `serde_arrow`, or given: [`Parquet::fields`]; a `String` is Utf8, an
//! `i64` Int64, an `f64` Float64, nothing nullable unless it is an `Option`),
//! written to rolling `*.parquet` files that stay in `_staging/` until the
//! checkpoint that covers them commits. Exactly-once: a reader of the output
//! directory only ever sees committed files, each row once.
//!
//! Rows whose fields are all flat (numbers, bools, strings, options of them)
//! go straight into Arrow builders ([`crate::columns::Columns`]); other row
//! types are buffered and converted by `serde_arrow`.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use weir_core::checkpoint::Publish;
use weir_core::error::{Error, Result};
use weir_core::record::Rec;
use weir_core::sink::{Rejected, Sink, SinkContext, SinkWriter};
use weir_core::time::Epoch;

use crate::columns::{BATCH_STRING_BYTES, Columns};
use crate::staging::{CrcFile, StagedFile, Staging};

/// A Parquet output directory.
#[derive(Clone, Debug)]
pub struct Parquet {
    dir: PathBuf,
    rows_per_file: usize,
    rows_per_batch: usize,
    fields: Option<Vec<FieldRef>>,
}

impl Parquet {
    /// Writes into `dir` (created if missing).
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        Parquet { dir: dir.into(), rows_per_file: 4_000_000, rows_per_batch: 8 * 1024, fields: None }
    }

    /// Starts a new file after this many rows (files also close at every checkpoint).
    pub fn rows_per_file(mut self, rows: usize) -> Self {
        self.rows_per_file = rows.max(1);
        self
    }

    /// Writes these columns instead of the ones traced from the row type: for
    /// rows whose `Serialize` names fields only known at run time (a column per
    /// configured quantile, say). Each row must serialize as a struct with
    /// these field names and types; a row that does not is rejected (a dead letter).
    pub fn fields(mut self, fields: Vec<FieldRef>) -> Self {
        self.fields = Some(fields);
        self
    }
}

/// Snappy; no dictionary for floating-point columns: measured values seldom
/// repeat, so interning each one into a dictionary costs time (a tenth of a
/// sliding-window run's) and the writer falls back to plain encoding anyway.
fn writer_properties(schema: &Schema) -> WriterProperties {
    let mut props = WriterProperties::builder().set_compression(Compression::SNAPPY);
    for field in schema.fields() {
        let path = || ColumnPath::from(field.name().as_str());
        match field.data_type() {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                props = props.set_column_dictionary_enabled(path(), false);
            }
            DataType::Int32 | DataType::Int64 | DataType::UInt32 | DataType::UInt64 => {
                props = props
                    .set_column_dictionary_enabled(path(), false)
                    .set_column_encoding(path(), Encoding::DELTA_BINARY_PACKED);
            }
            _ => {}
        }
    }
    props.build()
}

fn arrow_err(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Encoding { what: format!("parquet {}", path.display()), message: e.to_string() }
}

impl<T: Serialize + DeserializeOwned + 'static> Sink<T> for Parquet {
    fn kind(&self) -> &str {
        "parquet"
    }

    fn open(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        let fields = match &self.fields {
            Some(fields) => fields.clone(),
            None => Vec::<FieldRef>::from_type::<T>(TracingOptions::default().strings_as_large_utf8(false)).map_err(
                |e| Error::config("parquet", format!("cannot derive an Arrow schema from the row type: {e}")),
            )?,
        };
        let staging = Staging::open(&self.dir, ctx)?;
        Ok(Box::new(ParquetWriter {
            schema: Arc::new(Schema::new(fields.clone())),
            columns: Columns::for_fields(&fields, self.rows_per_batch),
            fields,
            staging,
            current: None,
            staged: Vec::new(),
            buffer: Vec::new(),
            rows_per_file: self.rows_per_file,
            rows_per_batch: self.rows_per_batch,
            epoch: 0,
            _row: PhantomData,
        }))
    }
}

struct Open {
    file: StagedFile,
    writer: ArrowWriter<CrcFile>,
    rows: usize,
}

struct ParquetWriter<T> {
    fields: Vec<FieldRef>,
    /// The fast path, for flat row types; `buffer` collects the rows otherwise.
    columns: Option<Columns>,
    schema: Arc<Schema>,
    staging: Staging,
    current: Option<Open>,
    staged: Vec<Publish>,
    buffer: Vec<T>,
    rows_per_file: usize,
    rows_per_batch: usize,
    epoch: Epoch,
    _row: PhantomData<T>,
}

impl<T: Serialize> ParquetWriter<T> {
    fn flush_batch(&mut self) -> Result<()> {
        let rows = self.columns.as_ref().map_or(self.buffer.len(), Columns::len);
        if rows == 0 {
            return Ok(());
        }
        let batch = match self.columns.as_mut() {
            Some(columns) => columns.finish(&self.schema).map_err(|e| arrow_err(self.staging.dir(), e))?,
            None => serde_arrow::to_record_batch(&self.fields, &self.buffer)
                .map_err(|e| arrow_err(self.staging.dir(), e))?,
        };
        self.buffer.clear();
        self.write_batch(&batch)
    }

    fn write_batch(&mut self, batch: &arrow::record_batch::RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let (file, out) = self.staging.create(self.epoch, "parquet")?;
            let props = writer_properties(&self.schema);
            let writer =
                ArrowWriter::try_new(out, self.schema.clone(), Some(props)).map_err(|e| arrow_err(&file.staged, e))?;
            self.current = Some(Open { file, writer, rows: 0 });
        }
        let Some(open) = self.current.as_mut() else { return Ok(()) };
        open.writer.write(batch).map_err(|e| arrow_err(&open.file.staged, e))?;
        open.rows += batch.num_rows();
        if open.rows >= self.rows_per_file {
            self.close_file()?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some(open) = self.current.take() {
            let out = open.writer.into_inner().map_err(|e| arrow_err(&open.file.staged, e))?;
            self.staged.push(self.staging.finish(open.file, out)?);
        }
        Ok(())
    }
}

impl<T: Serialize> ParquetWriter<T> {
    /// Pushes `rows` into the column builders in place (the fast path),
    /// finishing batches as they fill; returns the indexes of the rows it
    /// could not write, with why.
    fn push_rows<'r>(&mut self, rows: impl Iterator<Item = &'r T>) -> Result<Vec<(usize, String)>>
    where
        T: 'r,
    {
        let mut failed: Vec<(usize, String)> = Vec::new();
        for (i, row) in rows.enumerate() {
            let Some(columns) = self.columns.as_mut() else { break };
            if let Err(e) = columns.push(row) {
                failed.push((i, format!("cannot write the row as Parquet: {e}")));
                // The builders may hold part of the row: finish the batch of complete rows now.
                self.flush_batch()?;
                continue;
            }
            if columns.len() >= self.rows_per_batch || columns.string_bytes() >= BATCH_STRING_BYTES {
                self.flush_batch()?;
            }
        }
        Ok(failed)
    }
}

/// Moves the rows at the indexes of `failed` (ascending) out of `rows` into
/// `rejected`, dropping the rest.
fn take_failed<T>(rows: impl Iterator<Item = T>, failed: Vec<(usize, String)>, rejected: &mut Vec<Rejected<T>>) {
    if failed.is_empty() {
        return;
    }
    let mut failed = failed.into_iter().peekable();
    for (i, row) in rows.enumerate() {
        match failed.next_if(|(f, _)| *f == i) {
            Some((_, reason)) => rejected.push(Rejected { row, reason }),
            None if failed.peek().is_none() => break,
            None => {}
        }
    }
}

impl<T: Serialize> SinkWriter<T> for ParquetWriter<T> {
    fn write_records(&mut self, records: &mut Vec<Rec<T>>, rejected: &mut Vec<Rejected<T>>) -> Result<()> {
        if self.columns.is_none() {
            let mut rows: Vec<T> = records.drain(..).map(|r| r.value).collect();
            return self.write(&mut rows, rejected);
        }
        // Rows are read in place; the few rejected ones are taken out afterwards.
        let failed = self.push_rows(records.iter().map(|r| &r.value))?;
        take_failed(records.drain(..).map(|r| r.value), failed, rejected);
        records.clear();
        Ok(())
    }

    fn write(&mut self, rows: &mut Vec<T>, rejected: &mut Vec<Rejected<T>>) -> Result<()> {
        if self.columns.is_some() {
            // Rows are read in place; the few rejected ones are taken out afterwards.
            let failed = self.push_rows(rows.iter())?;
            take_failed(rows.drain(..), failed, rejected);
            rows.clear();
            return Ok(());
        }
        // Nested row types: convert each write's rows at once (the Parquet writer
        // gathers batches into row groups), so a row serde_arrow rejects is found
        // here and becomes a dead letter of this epoch.
        if rows.is_empty() {
            return Ok(());
        }
        if let Ok(batch) = serde_arrow::to_record_batch(&self.fields, &*rows) {
            rows.clear();
            return self.write_batch(&batch);
        }
        for row in rows.drain(..) {
            match serde_arrow::to_record_batch(&self.fields, &std::slice::from_ref(&row)) {
                Ok(_) => self.buffer.push(row),
                Err(e) => rejected.push(Rejected { row, reason: format!("cannot write the row as Parquet: {e}") }),
            }
        }
        self.flush_batch()
    }

    fn stage(&mut self, epoch: Epoch) -> Result<Vec<Publish>> {
        self.epoch = epoch;
        self.flush_batch()?;
        self.close_file()?;
        if !self.staged.is_empty() {
            self.staging.sync()?;
        }
        self.epoch = epoch + 1;
        Ok(std::mem::take(&mut self.staged))
    }
}
