//! Raw string values layered from the defaults, an optional TOML file and the environment, and
//! the one-line [`ConfigError`].

use super::*;

/// A setting that could not be accepted. Its `Display` is the one line a user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value it does not accept.
    #[error("invalid value for {var}: {value:?} (allowed: {allowed})")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value as given.
        value: String,
        /// What the variable accepts.
        allowed: &'static str,
    },
    /// A variable another one's value requires is not set.
    #[error("{var} is required when {because} (allowed: {allowed})")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// Which setting requires it.
        because: String,
        /// What the variable accepts.
        allowed: &'static str,
    },
    /// `CONFIG_FILE` names a file that cannot be read or parsed.
    #[error("CONFIG_FILE {path:?} could not be read: {reason}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

impl ConfigError {
    /// The variable this error is about.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Missing { var, .. } => var,
            ConfigError::File { .. } => CONFIG_FILE.name,
        }
    }
}

/// Raw string values after layering defaults, the optional file and the environment.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    values: HashMap<String, String>,
}

impl RawConfig {
    /// Layers the file named by `CONFIG_FILE` (if set) under the given environment.
    /// Empty values count as unset, so `PRODUCER_COUNT=` in a compose file means "forever".
    pub fn load<I, K, V>(env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: HashMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let mut values = match env.get(CONFIG_FILE.name) {
            Some(path) => read_file(PathBuf::from(path))?,
            None => HashMap::new(),
        };
        values.extend(env);
        Ok(Self { values })
    }

    /// Loads the process environment. A variable of `service` whose value is not valid UTF-8 is
    /// a [`ConfigError::Invalid`] (shown with its bytes decoded lossily) instead of a panic;
    /// other variables that are not UTF-8 are none of our business and are ignored.
    pub fn from_env(service: Service) -> Result<Self, ConfigError> {
        let ours = service.vars();
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            match value.into_string() {
                Ok(value) => env.push((key.to_string(), value)),
                Err(bad) => {
                    if let Some(spec) = ours.iter().find(|v| v.name == key) {
                        return Err(ConfigError::Invalid {
                            var: spec.name,
                            value: format!("{} (not valid UTF-8)", bad.to_string_lossy()),
                            allowed: spec.allowed,
                        });
                    }
                }
            }
        }
        Self::load(env)
    }

    /// The value of `spec`, or its default.
    pub fn get(&self, spec: &VarSpec) -> Option<&str> {
        self.values
            .get(spec.name)
            .map(|s| s.trim())
            .or(spec.default)
    }

    pub(super) fn invalid(&self, spec: &VarSpec, value: &str) -> ConfigError {
        ConfigError::Invalid {
            var: spec.name,
            value: value.to_string(),
            allowed: spec.allowed,
        }
    }

    /// Parses `spec` as a number within `min..=max`; `None` when unset with no default.
    pub fn number<T>(&self, spec: &VarSpec, min: T, max: T) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + Copy,
    {
        let Some(raw) = self.get(spec) else {
            return Ok(None);
        };
        match raw.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(self.invalid(spec, raw)),
        }
    }

    /// Like [`RawConfig::number`] for variables that have a default.
    pub fn required_number<T>(&self, spec: &VarSpec, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Copy,
    {
        self.number(spec, min, max)?
            .ok_or_else(|| ConfigError::Missing {
                var: spec.name,
                because: "it has no default".into(),
                allowed: spec.allowed,
            })
    }

    /// A duration in milliseconds within `min_ms..=max_ms`.
    pub fn millis(
        &self,
        spec: &VarSpec,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<Duration, ConfigError> {
        self.required_number(spec, min_ms, max_ms)
            .map(Duration::from_millis)
    }

    /// A string checked by `valid`.
    pub fn text(
        &self,
        spec: &VarSpec,
        valid: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, ConfigError> {
        match self.get(spec) {
            None => Ok(None),
            Some(v) if valid(v) => Ok(Some(v.to_string())),
            Some(v) => Err(self.invalid(spec, v)),
        }
    }

    /// One of a fixed set of words, compared without regard to case.
    pub fn choice<T: Copy>(&self, spec: &VarSpec, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let raw = self.get(spec).unwrap_or_default();
        choices
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(raw))
            .map(|(_, v)| *v)
            .ok_or_else(|| self.invalid(spec, raw))
    }
}

fn read_file(path: PathBuf) -> Result<HashMap<String, String>, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        path: path.clone(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let table: HashMap<String, config::Value> = config::Config::builder()
        .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| fail(e.to_string()))?;
    table
        .into_iter()
        .map(|(k, v)| {
            let key = k.to_ascii_uppercase();
            v.into_string()
                .map(|s| (key.clone(), s))
                .map_err(|e| fail(format!("key {key}: {e}")))
        })
        .collect()
}
