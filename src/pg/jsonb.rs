//! jsonb values crossing between PostgreSQL and Rust without a panic.
//!
//! pgrx's `JsonB` reads a datum by printing it and parsing the text with
//! serde_json, and `expect`s that to work. It does not for every jsonb:
//! serde_json refuses nesting deeper than 128 levels and numbers beyond an
//! f64 (`1e400` is a valid jsonb number), and the `expect` then panics. Such
//! values come from data the extension does not control (a tenant's rows,
//! a model's statement), so the extension reads jsonb as text here, and
//! hands rows back to SQL as text parsed by PostgreSQL's own `jsonb_in`.

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::Value;

/// The value of a jsonb printed as text, or None when serde_json cannot
/// hold it (over 128 levels deep, or a number beyond an f64).
pub fn from_text(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

/// The first column of each row, jsonb printed as text, as values; a row
/// serde_json cannot hold ([`from_text`]) is left out.
pub fn first_column_values(
    rows: pgrx::spi::SpiTupleTable<'_>,
) -> Result<Vec<Value>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for row in rows {
        if let Some(j) = row.get::<String>(1)?.as_deref().and_then(from_text) {
            out.push(j);
        }
    }
    Ok(out)
}

/// A jsonb result kept as the text PostgreSQL printed: returned to SQL
/// through `jsonb_in`, so it arrives exactly as it was (no f64 rounding of
/// numerics, no depth limit but PostgreSQL's own).
pub struct JsonbText(pub String);

impl IntoDatum for JsonbText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let text = std::ffi::CString::new(self.0).ok()?;
        // SAFETY: jsonb_in takes a C string; an invalid one raises an ERROR.
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[text.as_c_str().into_datum()])
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns the datum into_datum made (or NULL), as pgrx does for JsonB.
unsafe impl pgrx::callconv::BoxRet for JsonbText {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(JsonbText, "jsonb");
