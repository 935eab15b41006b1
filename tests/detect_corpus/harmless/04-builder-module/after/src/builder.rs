/// Builds a request step by step.
pub struct Builder {
    parts: Vec<String>,
}

impl Builder {
    /// Adds a part.
    pub fn part(mut self, p: &str) -> Self {
        self.parts.push(p.to_string());
        self
    }
}
