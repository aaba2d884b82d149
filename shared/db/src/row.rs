//! Reading a row's columns by position, for the rows the hot paths read many of (a page of
//! runs, a batch of GetRuns, a page of files). sea-orm's derived `FromQueryResult` looks each
//! column up by name (a hash of the name per column) and, for every NULL column of an `Option`
//! field, builds and throws away an error with the column's name formatted into it: for a
//! run, with its dozen nullable columns, that was a third of ListRuns' time in the runner
//! (perf, bench/load.sh). Here each column is decoded in place by its index, and a NULL is
//! just `None`.
//!
//! Every column's type is checked against the field it is read into, NULL or not, so a query
//! and its reader out of step are an error, never a wrong value. [`read_all`] checks them on a
//! result's first row only: every row of one result has the same columns (one row
//! description), and a reader reads the same fields in the same order from each. sqlx's own
//! check on every value (a clone of the value's type and a comparison per column) made a
//! listed run cost the runner 22,200-22,500 instructions; checked once per result, 18,000
//! (callgrind, `pirus run list` over 90,000 runs; docs/benchmarks.md).

use std::any::type_name;

use sea_orm::{
    DbErr, QueryResult,
    sqlx::{Column, Decode, Postgres, Row, Type, TypeInfo, postgres::PgRow},
};

/// The columns of one row, read in the order the query selects them.
#[derive(Debug)]
pub struct Columns<'r> {
    row: &'r PgRow,
    next: usize,
    /// Whether each column's type is checked before it is decoded (else it was checked on an
    /// earlier row of the same result).
    check: bool,
}

impl<'r> Columns<'r> {
    fn new(result: &'r QueryResult, check: bool) -> Result<Self, DbErr> {
        let row = result
            .try_as_pg_row()
            .ok_or_else(|| DbErr::Type("not a PostgreSQL row".to_owned()))?;
        Ok(Self {
            row,
            next: 0,
            check,
        })
    }

    /// The next column, decoded as `T` (an `Option` for a nullable column).
    pub fn take<T>(&mut self) -> Result<T, DbErr>
    where
        T: Decode<'r, Postgres> + Type<Postgres>,
    {
        let index = self.next;
        self.next += 1;
        if self.check {
            self.check_type::<T>(index)?;
        }
        self.row
            .try_get_unchecked::<T, usize>(index)
            .map_err(|e| self.error(index, e))
    }

    /// Fails unless the column at `index` holds values of `T`'s type (whatever this row's
    /// value, NULL included).
    fn check_type<T: Type<Postgres>>(&self, index: usize) -> Result<(), DbErr> {
        let Some(column) = self.row.columns().get(index) else {
            return Err(DbErr::Type(format!(
                "column {index} read of a row of {}",
                self.row.columns().len()
            )));
        };
        let ty = column.type_info();
        if ty.is_null() || T::compatible(ty) {
            Ok(())
        } else {
            Err(self.error(
                index,
                format!("a {} column read as {}", ty.name(), type_name::<T>()),
            ))
        }
    }

    fn error(&self, index: usize, e: impl std::fmt::Display) -> DbErr {
        let name = self.row.columns().get(index).map_or("?", |c| c.name());
        DbErr::Type(format!("column {index} ({name}): {e}"))
    }

    /// Fails unless every column was read: a query and its reader that went out of step.
    pub fn finish(&self) -> Result<(), DbErr> {
        let selected = self.row.columns().len();
        if self.next == selected {
            Ok(())
        } else {
            Err(DbErr::Type(format!(
                "read {} columns of a row of {selected}",
                self.next
            )))
        }
    }
}

/// Reads one row with `read`, every column checked and read.
pub fn read_one<T>(
    result: &QueryResult,
    read: impl FnOnce(&mut Columns<'_>) -> Result<T, DbErr>,
) -> Result<T, DbErr> {
    let mut columns = Columns::new(result, true)?;
    let value = read(&mut columns)?;
    columns.finish()?;
    Ok(value)
}

/// Reads every row of one result with `read`, the column types checked on the first row (see
/// the module's comment). `read` must read the same types in the same order from every row,
/// whatever their values; every reader here reads a struct's fields in turn.
pub fn read_all<T>(
    results: &[QueryResult],
    read: impl Fn(&mut Columns<'_>) -> Result<T, DbErr>,
) -> Result<Vec<T>, DbErr> {
    let mut out = Vec::with_capacity(results.len());
    for (i, result) in results.iter().enumerate() {
        let mut columns = Columns::new(result, i == 0)?;
        out.push(read(&mut columns)?);
        columns.finish()?;
    }
    Ok(out)
}
