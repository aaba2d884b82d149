//! A WHERE clause built from optional filters, with numbered parameters.

use sea_orm::Value;

#[derive(Debug, Default)]
pub struct Where {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Where {
    /// Adds a condition; its one `?` becomes the next `$n`.
    pub fn and(&mut self, condition: &str, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        self.conditions
            .push(condition.replace('?', &format!("${}", self.values.len())));
        self
    }

    /// Adds a condition without a parameter.
    pub fn and_only(&mut self, condition: &str) -> &mut Self {
        self.conditions.push(condition.to_owned());
        self
    }

    /// `WHERE a AND b`, or nothing; and the parameters.
    pub fn build(self) -> (String, Vec<Value>) {
        let sql = if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        };
        (sql, self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parameters_in_order() {
        let mut w = Where::default();
        w.and("a > ?", 1i64).and("b = ?", "x");
        let (sql, values) = w.build();
        assert_eq!(sql, "WHERE a > $1 AND b = $2");
        assert_eq!(values.len(), 2);
        assert_eq!(Where::default().build().0, "");
    }
}
