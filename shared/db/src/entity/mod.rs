//! sea-orm entities of the tables both services read. Columns mirror the migration; states are
//! the lowercase strings the CHECK constraints allow, converted to domain enums by each service.

pub mod blobs;
pub mod files;
pub mod pipeline_documents;
pub mod pipelines;
pub mod uploads;
