//! Output for people (aligned tables, human sizes, relative times) and for scripts (the
//! protos' own JSON mapping, with the proto field names: what `--json` prints).

use std::{io::Write, sync::OnceLock};

use anyhow::{Context, Result};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

fn pools() -> &'static (Option<DescriptorPool>, Option<DescriptorPool>) {
    static POOLS: OnceLock<(Option<DescriptorPool>, Option<DescriptorPool>)> = OnceLock::new();
    POOLS.get_or_init(|| {
        (
            DescriptorPool::decode(pirus_proto::CATALOGUE_DESCRIPTOR_SET).ok(),
            DescriptorPool::decode(pirus_proto::RUNNER_DESCRIPTOR_SET).ok(),
        )
    })
}

/// A message as JSON: the canonical protobuf mapping with the proto's field names, every
/// field present (defaults included, so scripts see stable keys), enums by name, 64-bit
/// integers as numbers.
pub(crate) fn to_json<M: prost::Message>(message: &M, full_name: &str) -> Result<Value> {
    let (catalogue, runner) = pools();
    let pool = if full_name.starts_with("pirus.runner.") {
        runner
    } else {
        catalogue
    };
    let descriptor = pool
        .as_ref()
        .and_then(|p| p.get_message_by_name(full_name))
        .with_context(|| format!("no message {full_name} in the protos"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("cannot read a {full_name}"))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    Ok(dynamic.serialize_with_options(serde_json::value::Serializer, &options)?)
}

/// Writes `data` to stdout, flushed. Where the reader has gone (`pirus run list | head`,
/// `pirus run logs -f | grep -m1 done`), the process ends at once and successfully, as Unix
/// filters do: `println!` would panic there, and a follow would go on reading a log nobody
/// reads. Any other failure to write (a full disk) ends it with a message and code 1.
pub(crate) fn write_stdout(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pirus: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Prints one line to stdout ([`write_stdout`]).
pub(crate) fn print_line(line: &str) {
    write_stdout(format!("{line}\n").as_bytes());
}

/// Prints one JSON document.
pub(crate) fn print_json(value: &Value) {
    print_line(&value.to_string());
}

/// A list of messages as one JSON array.
pub(crate) fn print_json_list<M: prost::Message>(items: &[M], full_name: &str) -> Result<()> {
    let values = items
        .iter()
        .map(|m| to_json(m, full_name))
        .collect::<Result<Vec<_>>>()?;
    print_json(&Value::Array(values));
    Ok(())
}

/// A list for people (`table`) or, with `--json`, as one JSON array.
pub(crate) fn emit_list<M: prost::Message>(
    json: bool,
    items: &[M],
    full_name: &str,
    table: impl FnOnce(&[M]),
) -> Result<()> {
    if json {
        print_json_list(items, full_name)
    } else {
        table(items);
        Ok(())
    }
}

/// One message for people (`table` of it alone) or, with `--json`, as its JSON.
pub(crate) fn emit<M: prost::Message>(
    json: bool,
    item: &M,
    full_name: &str,
    table: impl FnOnce(&[M]),
) -> Result<()> {
    if json {
        print_json(&to_json(item, full_name)?);
    } else {
        table(std::slice::from_ref(item));
    }
    Ok(())
}

/// Sizes as people read them: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub(crate) fn size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time as people read it, relative to now: `just now`, `5m ago`, `3h ago`, `2d ago`;
/// `-` when unset.
pub(crate) fn ago(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "-".to_owned();
    };
    let then = chrono::DateTime::from_timestamp(t.seconds, 0).unwrap_or_default();
    let secs = (chrono::Utc::now() - then).num_seconds();
    match secs {
        s if s < 0 => "just now".to_owned(),
        s if s < 10 => "just now".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// An enum's name without its type prefix, in lower case: `RUN_STATUS_DONE` -> `done`.
pub(crate) fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// An aligned table: a header row, then rows; the last column is never padded.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(
                        ' ',
                        widths[c] - cell.chars().count() + 2,
                    ));
                }
            }
            print_line(line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }

    #[test]
    fn messages_print_with_their_proto_names() -> Result<()> {
        let run = pirus_proto::runner::v1::Run {
            id: "r1".into(),
            status: pirus_proto::runner::v1::RunStatus::Done as i32,
            attempt: 1,
            ..Default::default()
        };
        let json = to_json(&run, "pirus.runner.v1.Run")?;
        assert_eq!(json["id"], "r1");
        assert_eq!(json["status"], "RUN_STATUS_DONE");
        assert_eq!(json["attempt"], 1);
        assert_eq!(json["input_file_ids"], serde_json::json!([]));
        Ok(())
    }
}
