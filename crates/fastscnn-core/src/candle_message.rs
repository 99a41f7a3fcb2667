//! candle's errors as one line of text, for the messages of the crates' own errors.

/// A candle error's message on one line: without the backtrace candle appends when
/// `RUST_BACKTRACE` is set, its context and path before it rather than on lines of their own.
pub fn candle_message(error: &candle_core::Error) -> String {
    use candle_core::Error;
    match error {
        Error::WithBacktrace { inner, .. } => candle_message(inner),
        Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        Error::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        Error::WrappedContext { wrapped, context } => format!("{context}: {wrapped}"),
        other => {
            let text = other.to_string();
            text.lines().next().unwrap_or_default().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_path_and_message_share_one_line_without_the_backtrace() {
        let inner = candle_core::Error::Msg("bad header".into());
        let error = candle_core::Error::WithBacktrace {
            inner: Box::new(
                inner
                    .with_path("/tmp/w.safetensors")
                    .context("loading the weights"),
            ),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(
            candle_message(&error),
            "loading the weights: /tmp/w.safetensors: bad header"
        );
    }
}
