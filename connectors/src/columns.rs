//! Rows of flat records straight into Arrow column builders.
//!
//! The Parquet sink traces its schema from the row type with `serde_arrow`.
//! When every field is a primitive (bool, integers, floats) or a string,
//! optionally nullable, [`Columns`] writes each row's fields into typed Arrow
//! builders as the row is serialized: the i-th field goes to the i-th column,
//! with no intermediate buffer of rows and no per-field name lookup. That is
//! about three times cheaper per row than the general `serde_arrow` path,
//! which the sink keeps for nested or exotic types.

use std::fmt::Display;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    LargeStringBuilder, StringBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, FieldRef, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use serde::ser::{self, Impossible};

/// The longest string one value may have (Arrow's `Utf8` offsets are 32-bit:
/// a batch holds at most 2 GiB of string data).
pub const MAX_STRING_BYTES: usize = 64 << 20;

/// String bytes after which a batch should be finished, well inside `Utf8`'s 2 GiB.
pub const BATCH_STRING_BYTES: usize = 1 << 30;

/// Why a row could not be written into the columns.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ColumnsError(String);

impl ser::Error for ColumnsError {
    fn custom<T: Display>(msg: T) -> Self {
        ColumnsError(msg.to_string())
    }
}

/// One column's builder.
enum Col {
    Bool(BooleanBuilder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
}

impl Col {
    /// A builder for `t` with room for `n` values (so a batch never regrows its buffers).
    fn new(t: &DataType, n: usize) -> Option<Col> {
        Some(match t {
            DataType::Boolean => Col::Bool(BooleanBuilder::with_capacity(n)),
            DataType::Int8 => Col::I8(Int8Builder::with_capacity(n)),
            DataType::Int16 => Col::I16(Int16Builder::with_capacity(n)),
            DataType::Int32 => Col::I32(Int32Builder::with_capacity(n)),
            DataType::Int64 => Col::I64(Int64Builder::with_capacity(n)),
            DataType::UInt8 => Col::U8(UInt8Builder::with_capacity(n)),
            DataType::UInt16 => Col::U16(UInt16Builder::with_capacity(n)),
            DataType::UInt32 => Col::U32(UInt32Builder::with_capacity(n)),
            DataType::UInt64 => Col::U64(UInt64Builder::with_capacity(n)),
            DataType::Float32 => Col::F32(Float32Builder::with_capacity(n)),
            DataType::Float64 => Col::F64(Float64Builder::with_capacity(n)),
            DataType::Utf8 => Col::Utf8(StringBuilder::with_capacity(n, n * 16)),
            DataType::LargeUtf8 => Col::LargeUtf8(LargeStringBuilder::with_capacity(n, n * 16)),
            _ => return None,
        })
    }

    #[inline]
    fn len(&self) -> usize {
        use arrow::array::ArrayBuilder;
        match self {
            Col::Bool(b) => b.len(),
            Col::I8(b) => b.len(),
            Col::I16(b) => b.len(),
            Col::I32(b) => b.len(),
            Col::I64(b) => b.len(),
            Col::U8(b) => b.len(),
            Col::U16(b) => b.len(),
            Col::U32(b) => b.len(),
            Col::U64(b) => b.len(),
            Col::F32(b) => b.len(),
            Col::F64(b) => b.len(),
            Col::Utf8(b) => b.len(),
            Col::LargeUtf8(b) => b.len(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Col::Bool(b) => b.append_null(),
            Col::I8(b) => b.append_null(),
            Col::I16(b) => b.append_null(),
            Col::I32(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::U8(b) => b.append_null(),
            Col::U16(b) => b.append_null(),
            Col::U32(b) => b.append_null(),
            Col::U64(b) => b.append_null(),
            Col::F32(b) => b.append_null(),
            Col::F64(b) => b.append_null(),
            Col::Utf8(b) => b.append_null(),
            Col::LargeUtf8(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Bool(b) => Arc::new(b.finish()),
            Col::I8(b) => Arc::new(b.finish()),
            Col::I16(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::U8(b) => Arc::new(b.finish()),
            Col::U16(b) => Arc::new(b.finish()),
            Col::U32(b) => Arc::new(b.finish()),
            Col::U64(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::LargeUtf8(b) => Arc::new(b.finish()),
        }
    }

    /// Appends a signed integer to an integer column it fits in.
    #[inline]
    fn int(&mut self, v: i64) -> Result<(), ColumnsError> {
        let ok = match self {
            Col::I8(b) => i8::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::I16(b) => i16::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::I32(b) => i32::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::I64(b) => {
                b.append_value(v);
                true
            }
            _ if v >= 0 => return self.uint(v as u64),
            _ => false,
        };
        if ok { Ok(()) } else { Err(self.mismatch(&v)) }
    }

    /// Appends an unsigned integer to an integer column it fits in.
    fn uint(&mut self, v: u64) -> Result<(), ColumnsError> {
        let ok = match self {
            Col::U8(b) => u8::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::U16(b) => u16::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::U32(b) => u32::try_from(v).map(|v| b.append_value(v)).is_ok(),
            Col::U64(b) => {
                b.append_value(v);
                true
            }
            Col::I8(_) | Col::I16(_) | Col::I32(_) | Col::I64(_) => match i64::try_from(v) {
                Ok(v) => return self.int(v),
                Err(_) => false,
            },
            _ => false,
        };
        if ok { Ok(()) } else { Err(self.mismatch(&v)) }
    }

    fn mismatch(&self, v: &dyn Display) -> ColumnsError {
        ColumnsError(format!("value {v} does not fit the column's Arrow type {}", self.type_name()))
    }

    fn type_name(&self) -> &'static str {
        match self {
            Col::Bool(_) => "Boolean",
            Col::I8(_) => "Int8",
            Col::I16(_) => "Int16",
            Col::I32(_) => "Int32",
            Col::I64(_) => "Int64",
            Col::U8(_) => "UInt8",
            Col::U16(_) => "UInt16",
            Col::U32(_) => "UInt32",
            Col::U64(_) => "UInt64",
            Col::F32(_) => "Float32",
            Col::F64(_) => "Float64",
            Col::Utf8(_) => "Utf8",
            Col::LargeUtf8(_) => "LargeUtf8",
        }
    }
}

/// Column builders for the rows of one record batch (see the module docs).
pub struct Columns {
    fields: Vec<FieldRef>,
    capacity: usize,
    /// The `&'static str` name serde gave each field last time: a field is
    /// recognised by pointer, not by comparing names.
    keys: Vec<&'static str>,
    /// Whether each field is nullable (read once per field of a row).
    nullable: Vec<bool>,
    cols: Vec<Col>,
    rows: usize,
    /// Bytes of string data appended since the last [`Columns::finish`].
    strings: usize,
}

impl Columns {
    /// Builders for `fields`, or `None` when a field's type is not flat
    /// (nested, list, dictionary, temporal, ...): use `serde_arrow` then.
    /// The builders have room for `capacity` rows (a batch's size), so they
    /// never regrow; after a smaller batch the next one starts smaller.
    pub fn for_fields(fields: &[FieldRef], capacity: usize) -> Option<Columns> {
        let cols = fields.iter().map(|f| Col::new(f.data_type(), capacity)).collect::<Option<Vec<_>>>()?;
        Some(Columns {
            fields: fields.to_vec(),
            capacity,
            keys: vec![""; fields.len()],
            nullable: fields.iter().map(|f| f.is_nullable()).collect(),
            cols,
            rows: 0,
            strings: 0,
        })
    }

    /// Rows appended since the last [`Columns::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Bytes of string data in the batch being built.
    #[inline]
    pub fn string_bytes(&self) -> usize {
        self.strings
    }

    /// Whether no row was appended since the last [`Columns::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one row (a struct whose fields are the columns, in any order;
    /// a skipped nullable field is null).
    ///
    /// A row that does not fit the schema (a `Serialize` impl that does not
    /// match the traced schema, an integer out of the column's range, a string
    /// too long) is an error and is not counted: some columns may hold a value
    /// of it, so call [`Columns::finish`] next, which keeps only the complete rows.
    pub fn push<T: Serialize + ?Sized>(&mut self, row: &T) -> Result<(), ColumnsError> {
        let mut complete = false;
        row.serialize(RowSer { columns: self, complete: &mut complete })?;
        let rows = self.rows + 1;
        if complete {
            self.rows = rows;
            return Ok(());
        }
        for (col, field) in self.cols.iter_mut().zip(&self.fields) {
            if col.len() < rows {
                if !field.is_nullable() {
                    return Err(ColumnsError(format!("row has no value for non-nullable field `{}`", field.name())));
                }
                col.append_null();
            }
        }
        self.rows = rows;
        Ok(())
    }

    /// The appended rows as a record batch; the builders start empty again.
    pub fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
        let rows = self.rows;
        // After a rejected row some columns hold one value more: keep the complete rows.
        let arrays = self
            .cols
            .iter_mut()
            .map(|c| {
                let a = c.finish();
                if a.len() == rows { a } else { a.slice(0, rows) }
            })
            .collect();
        // The next batch is likely as large as this one (batches end at checkpoints too).
        let room = self.rows.clamp(1024.min(self.capacity), self.capacity);
        self.rows = 0;
        self.strings = 0;
        for (col, field) in self.cols.iter_mut().zip(&self.fields) {
            if let Some(fresh) = Col::new(field.data_type(), room) {
                *col = fresh;
            }
        }
        RecordBatch::try_new(schema.clone(), arrays)
    }

    /// The column for field `key`, expected at `next`.
    #[inline]
    fn column(&mut self, next: usize, key: &'static str) -> Result<usize, ColumnsError> {
        match self.keys.get(next) {
            Some(k) if std::ptr::eq(k.as_ptr(), key.as_ptr()) && k.len() == key.len() => Ok(next),
            _ => self.find_column(key),
        }
    }

    #[cold]
    fn find_column(&mut self, key: &'static str) -> Result<usize, ColumnsError> {
        let i = self
            .fields
            .iter()
            .position(|f| f.name() == key)
            .ok_or_else(|| ColumnsError(format!("field `{key}` is not in the schema")))?;
        self.keys[i] = key;
        Ok(i)
    }
}

/// Serializes one row: only structs (and newtypes around them) are rows.
struct RowSer<'a> {
    columns: &'a mut Columns,
    /// Set when every column got exactly one value, in schema order.
    complete: &'a mut bool,
}

/// Serializes a row's fields into their columns.
struct FieldsSer<'a> {
    columns: &'a mut Columns,
    complete: &'a mut bool,
    next: usize,
    /// Whether every field so far went to the next column in schema order.
    in_order: bool,
}

/// Serializes one value into one column.
struct ValueSer<'a> {
    col: &'a mut Col,
    nullable: bool,
    /// The batch's string bytes, counted as strings are appended.
    strings: &'a mut usize,
}

fn not_a_row(what: &str) -> ColumnsError {
    ColumnsError(format!("a Parquet row must be a struct of flat fields, not {what}"))
}

macro_rules! reject {
    ($err:expr; $($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> { Err($err(stringify!($name))) })*
    };
}

/// The compound types neither serializer accepts (`$err` says why).
macro_rules! reject_compound {
    ($err:ident) => {
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), ColumnsError> {
            Err($err("an enum"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ColumnsError> {
            Err($err("a sequence"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ColumnsError> {
            Err($err("a tuple"))
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, ColumnsError> {
            Err($err("a tuple struct"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, ColumnsError> {
            Err($err("an enum"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ColumnsError> {
            Err($err("a map"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, ColumnsError> {
            Err($err("an enum"))
        }
    };
}

impl<'a> ser::Serializer for RowSer<'a> {
    type Ok = ();
    type Error = ColumnsError;
    type SerializeSeq = Impossible<(), ColumnsError>;
    type SerializeTuple = Impossible<(), ColumnsError>;
    type SerializeTupleStruct = Impossible<(), ColumnsError>;
    type SerializeTupleVariant = Impossible<(), ColumnsError>;
    type SerializeMap = Impossible<(), ColumnsError>;
    type SerializeStruct = FieldsSer<'a>;
    type SerializeStructVariant = Impossible<(), ColumnsError>;

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<FieldsSer<'a>, ColumnsError> {
        Ok(FieldsSer { columns: self.columns, complete: self.complete, next: 0, in_order: true })
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, v: &T) -> Result<(), ColumnsError> {
        v.serialize(self)
    }

    reject!(not_a_row;
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
        serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64),
        serialize_f32(f32), serialize_f64(f64), serialize_char(char), serialize_str(&str),
        serialize_bytes(&[u8]), serialize_none(), serialize_unit(), serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), ColumnsError> {
        Err(not_a_row("an option"))
    }
    reject_compound!(not_a_row);
}

impl ser::SerializeStruct for FieldsSer<'_> {
    type Ok = ();
    type Error = ColumnsError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), ColumnsError> {
        let i = self.columns.column(self.next, key)?;
        self.in_order &= i == self.next;
        self.next = i + 1;
        let columns = &mut *self.columns;
        let nullable = columns.nullable[i];
        let col = &mut columns.cols[i];
        if !self.in_order && col.len() > columns.rows {
            return Err(ColumnsError(format!("field `{key}` given twice in one row")));
        }
        value
            .serialize(ValueSer { col, nullable, strings: &mut columns.strings })
            .map_err(|e| ColumnsError(format!("field `{key}`: {e}")))
    }

    fn skip_field(&mut self, _key: &'static str) -> Result<(), ColumnsError> {
        Ok(())
    }

    fn end(self) -> Result<(), ColumnsError> {
        *self.complete = self.in_order && self.next == self.columns.cols.len();
        Ok(())
    }
}

fn not_flat(what: &str) -> ColumnsError {
    ColumnsError(format!("{what} is not a flat column value"))
}

impl ser::Serializer for ValueSer<'_> {
    type Ok = ();
    type Error = ColumnsError;
    type SerializeSeq = Impossible<(), ColumnsError>;
    type SerializeTuple = Impossible<(), ColumnsError>;
    type SerializeTupleStruct = Impossible<(), ColumnsError>;
    type SerializeTupleVariant = Impossible<(), ColumnsError>;
    type SerializeMap = Impossible<(), ColumnsError>;
    type SerializeStruct = Impossible<(), ColumnsError>;
    type SerializeStructVariant = Impossible<(), ColumnsError>;

    fn serialize_bool(self, v: bool) -> Result<(), ColumnsError> {
        match self.col {
            Col::Bool(b) => {
                b.append_value(v);
                Ok(())
            }
            col => Err(col.mismatch(&v)),
        }
    }
    fn serialize_i8(self, v: i8) -> Result<(), ColumnsError> {
        self.col.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), ColumnsError> {
        self.col.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), ColumnsError> {
        self.col.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), ColumnsError> {
        self.col.int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), ColumnsError> {
        self.col.uint(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), ColumnsError> {
        self.col.uint(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), ColumnsError> {
        self.col.uint(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), ColumnsError> {
        self.col.uint(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), ColumnsError> {
        match self.col {
            Col::F32(b) => {
                b.append_value(v);
                Ok(())
            }
            Col::F64(b) => {
                b.append_value(v.into());
                Ok(())
            }
            col => Err(col.mismatch(&v)),
        }
    }
    fn serialize_f64(self, v: f64) -> Result<(), ColumnsError> {
        match self.col {
            Col::F64(b) => {
                b.append_value(v);
                Ok(())
            }
            col => Err(col.mismatch(&v)),
        }
    }
    fn serialize_char(self, v: char) -> Result<(), ColumnsError> {
        match self.col {
            Col::U32(b) => {
                b.append_value(v.into());
                Ok(())
            }
            Col::Utf8(b) => {
                b.append_value(v.encode_utf8(&mut [0; 4]));
                *self.strings += v.len_utf8();
                Ok(())
            }
            Col::LargeUtf8(b) => {
                b.append_value(v.encode_utf8(&mut [0; 4]));
                *self.strings += v.len_utf8();
                Ok(())
            }
            col => Err(col.mismatch(&v)),
        }
    }
    fn serialize_str(self, v: &str) -> Result<(), ColumnsError> {
        if v.len() > MAX_STRING_BYTES {
            return Err(ColumnsError(format!(
                "a string of {} bytes is longer than the {MAX_STRING_BYTES} bytes a Parquet value may have here",
                v.len()
            )));
        }
        match self.col {
            Col::Utf8(b) => b.append_value(v),
            Col::LargeUtf8(b) => b.append_value(v),
            col => return Err(col.mismatch(&v)),
        }
        *self.strings += v.len();
        Ok(())
    }
    fn serialize_none(self) -> Result<(), ColumnsError> {
        if !self.nullable {
            return Err(ColumnsError("null in a non-nullable column".into()));
        }
        self.col.append_null();
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), ColumnsError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), ColumnsError> {
        self.serialize_none()
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), ColumnsError> {
        v.serialize(self)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), ColumnsError> {
        Err(not_flat("a byte string"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), ColumnsError> {
        Err(not_flat("a unit struct"))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), ColumnsError> {
        Err(not_flat("an enum"))
    }
    reject_compound!(not_flat);
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, ColumnsError> {
        Err(not_flat("a struct"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_arrow::schema::{SchemaLike, TracingOptions};

    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Row {
        name: String,
        start: i64,
        count: u32,
        small: i8,
        flag: bool,
        ratio: f32,
        mean: f64,
        maybe: Option<i64>,
        label: Option<String>,
        letter: char,
    }

    fn fields<T: Serialize + for<'de> Deserialize<'de>>() -> Vec<FieldRef> {
        Vec::<FieldRef>::from_type::<T>(TracingOptions::default().strings_as_large_utf8(false)).unwrap()
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            ".{0,12}",
            any::<i64>(),
            any::<u32>(),
            any::<i8>(),
            any::<bool>(),
            any::<f32>(),
            any::<f64>(),
            any::<Option<i64>>(),
            proptest::option::of("[a-z]{0,5}"),
            any::<char>(),
        )
            .prop_map(|(name, start, count, small, flag, ratio, mean, maybe, label, letter)| Row {
                name,
                start,
                count,
                small,
                flag,
                ratio,
                mean,
                maybe,
                label,
                letter,
            })
    }

    proptest! {
        /// The fast path builds exactly the batch serde_arrow builds.
        #[test]
        fn same_batch_as_serde_arrow(rows in proptest::collection::vec(row(), 0..50)) {
            let fields = fields::<Row>();
            let schema: SchemaRef = Arc::new(Schema::new(fields.clone()));
            let mut cols = Columns::for_fields(&fields, 16).expect("flat schema");
            for r in &rows {
                cols.push(r).unwrap();
            }
            prop_assert_eq!(cols.len(), rows.len());
            let fast = cols.finish(&schema).unwrap();
            let reference = serde_arrow::to_record_batch(&fields, &rows).unwrap();
            prop_assert_eq!(fast, reference);
            // The builders are reusable after finish.
            prop_assert!(cols.is_empty());
        }
    }

    #[test]
    fn nested_types_take_the_serde_arrow_path() {
        #[derive(Serialize, Deserialize)]
        struct Nested {
            a: i64,
            b: Vec<i64>,
        }
        assert!(Columns::for_fields(&fields::<Nested>(), 16).is_none());
    }

    #[test]
    fn skipped_fields_are_null_or_an_error() {
        #[derive(Serialize, Deserialize)]
        struct Skips {
            a: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            b: Option<i64>,
        }
        let fields = fields::<Skips>();
        let schema: SchemaRef = Arc::new(Schema::new(fields.clone()));
        let mut cols = Columns::for_fields(&fields, 16).unwrap();
        cols.push(&Skips { a: 1, b: None }).unwrap();
        cols.push(&Skips { a: 2, b: Some(3) }).unwrap();
        let batch = cols.finish(&schema).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).null_count(), 1);

        // A row type that does not match the schema is an error, never a silent wrong column.
        #[derive(Serialize)]
        struct Other {
            a: String,
        }
        let err = Columns::for_fields(&fields, 16).unwrap().push(&Other { a: "x".into() }).unwrap_err();
        assert!(err.to_string().contains("field `a`"), "{err}");
        #[derive(Serialize)]
        struct Missing {
            b: Option<i64>,
        }
        let err = Columns::for_fields(&fields, 16).unwrap().push(&Missing { b: None }).unwrap_err();
        assert!(err.to_string().contains("non-nullable field `a`"), "{err}");
    }
}
