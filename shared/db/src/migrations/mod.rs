//! Schema migrations. Each migration is plain PostgreSQL in a `.sql` file beside this one: the
//! schema uses partial indexes, arrays and CHECK constraints, which read best as SQL. Applied
//! migrations are never edited; a change is a new file.

use sea_orm_migration::prelude::*;

pub(crate) struct Migrator;

/// How many migrations the schema has.
pub(crate) const COUNT: usize = MIGRATIONS.len();

/// The names of the migrations, as `seaql_migrations` records them.
pub(crate) fn names() -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// The migrations, in order: (name, SQL).
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "m20261128_000001_initial",
        include_str!("m20261128_000001_initial.sql"),
    ),
    (
        "m20261130_000002_run_limits",
        include_str!("m20261130_000002_run_limits.sql"),
    ),
    (
        "m20261130_000003_boundary_views",
        include_str!("m20261130_000003_boundary_views.sql"),
    ),
    (
        "m20261130_000004_identity",
        include_str!("m20261130_000004_identity.sql"),
    ),
    (
        "m20261130_000005_runner_role",
        include_str!("m20261130_000005_runner_role.sql"),
    ),
    (
        "m20261130_000006_tes",
        include_str!("m20261130_000006_tes.sql"),
    ),
    (
        "m20261130_000007_hot_indexes",
        include_str!("m20261130_000007_hot_indexes.sql"),
    ),
    (
        "m20261201_000008_sealed_run_files",
        include_str!("m20261201_000008_sealed_run_files.sql"),
    ),
    (
        "m20261207_000009_run_plans",
        include_str!("m20261207_000009_run_plans.sql"),
    ),
    (
        "m20261207_000010_principals",
        include_str!("m20261207_000010_principals.sql"),
    ),
    (
        "m20261207_000011_placement",
        include_str!("m20261207_000011_placement.sql"),
    ),
];

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        MIGRATIONS
            .iter()
            .map(|&(name, sql)| Box::new(Sql { name, sql }) as Box<dyn MigrationTrait>)
            .collect()
    }
}

struct Sql {
    name: &'static str,
    sql: &'static str,
}

impl MigrationName for Sql {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Sql {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(self.sql)
            .await?;
        Ok(())
    }
}
