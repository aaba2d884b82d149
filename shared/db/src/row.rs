//! Reading a row's columns by position, for the rows the hot paths read many of (a page of
//! runs, a batch of GetRuns). sea-orm's derived `FromQueryResult` looks each column up by name
//! (a hash of the name per column) and, for every NULL column of an `Option` field, builds and
//! throws away an error with the column's name formatted into it: for a run, with its dozen
//! nullable columns, that was a third of ListRuns' time in the runner (perf, bench/load.sh).
//! Here each column is decoded in place by its index, and a NULL is just `None`.

use sea_orm::{
    DbErr, QueryResult,
    sqlx::{Decode, Postgres, Row, Type, postgres::PgRow},
};

/// The columns of one row, read in the order the query selects them.
pub struct Columns<'r> {
    row: &'r PgRow,
    next: usize,
}

impl<'r> Columns<'r> {
    pub fn of(result: &'r QueryResult) -> Result<Self, DbErr> {
        let row = result
            .try_as_pg_row()
            .ok_or_else(|| DbErr::Type("not a PostgreSQL row".to_owned()))?;
        Ok(Self { row, next: 0 })
    }

    /// The next column, decoded as `T` (an `Option` for a nullable column).
    pub fn take<T>(&mut self) -> Result<T, DbErr>
    where
        T: Decode<'r, Postgres> + Type<Postgres>,
    {
        let index = self.next;
        self.next += 1;
        self.row.try_get::<T, usize>(index).map_err(|e| {
            let name = self
                .row
                .columns()
                .get(index)
                .map_or("?", |c| sea_orm::sqlx::Column::name(c));
            DbErr::Type(format!("column {index} ({name}): {e}"))
        })
    }

    /// Fails unless every column was read: a query and its reader that went out of step.
    pub fn finish(self) -> Result<(), DbErr> {
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
