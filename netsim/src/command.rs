//! The `netsim` control protocol: one command per line, one answer per line.

use std::time::Duration;

use crate::Relay;

/// A control command, as parsed from one line by [`parse_command`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// `rebind`: [`Relay::rebind`].
    Rebind,
    /// `blackhole on|off`: [`Relay::set_blackhole`].
    Blackhole(bool),
    /// `block-udp on|off`: [`Relay::set_block_udp`].
    BlockUdp(bool),
    /// `delay <ms>` (one way, may be fractional): [`Relay::set_delay`].
    Delay(Duration),
    /// `loss <0..1>`: [`Relay::set_loss`].
    Loss(f64),
    /// `stats`: [`Relay::stats`].
    Stats,
}

/// Parses one control line (surrounding whitespace ignored); fails with a human-readable reason on an unknown
/// command, a missing or extra argument, or an out-of-range value.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else {
        return Err("empty command".to_owned());
    };
    let arg = words.next();
    if let Some(extra) = words.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let no_arg = |cmd: Command| match arg {
        None => Ok(cmd),
        Some(a) => Err(format!("{name} takes no argument, got {a:?}")),
    };
    let need_arg = || arg.ok_or_else(|| format!("{name} needs an argument"));
    match name {
        "rebind" => no_arg(Command::Rebind),
        "stats" => no_arg(Command::Stats),
        "blackhole" => on_off(need_arg()?).map(Command::Blackhole),
        "block-udp" => on_off(need_arg()?).map(Command::BlockUdp),
        "delay" => {
            let a = need_arg()?;
            let ms: f64 = a.parse().map_err(|_| format!("delay wants milliseconds, got {a:?}"))?;
            if !ms.is_finite() || ms < 0.0 {
                return Err(format!("delay must be a non-negative number of milliseconds, got {a:?}"));
            }
            Duration::try_from_secs_f64(ms / 1000.0)
                .map(Command::Delay)
                .map_err(|_| format!("delay out of range: {a:?}"))
        }
        "loss" => {
            let a = need_arg()?;
            let p: f64 = a.parse().map_err(|_| format!("loss wants a probability, got {a:?}"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("loss must be between 0 and 1, got {a:?}"));
            }
            Ok(Command::Loss(p))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn on_off(arg: &str) -> Result<bool, String> {
    match arg {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

impl Command {
    /// Applies the command to `relay` and returns the answer line (`ok`, or the stats for `stats`); never fails.
    pub fn apply(self, relay: &Relay) -> String {
        match self {
            Command::Rebind => relay.rebind(),
            Command::Blackhole(on) => relay.set_blackhole(on),
            Command::BlockUdp(on) => relay.set_block_udp(on),
            Command::Delay(d) => relay.set_delay(d),
            Command::Loss(p) => relay.set_loss(p),
            Command::Stats => return relay.stats().to_string(),
        }
        "ok".to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_command("rebind"), Ok(Command::Rebind));
        assert_eq!(parse_command("  stats \n"), Ok(Command::Stats));
        assert_eq!(parse_command("blackhole on"), Ok(Command::Blackhole(true)));
        assert_eq!(parse_command("blackhole off"), Ok(Command::Blackhole(false)));
        assert_eq!(parse_command("block-udp on"), Ok(Command::BlockUdp(true)));
        assert_eq!(parse_command("block-udp off\r"), Ok(Command::BlockUdp(false)));
        assert_eq!(parse_command("delay 25"), Ok(Command::Delay(Duration::from_millis(25))));
        assert_eq!(parse_command("delay 0"), Ok(Command::Delay(Duration::ZERO)));
        assert_eq!(parse_command("delay 0.5"), Ok(Command::Delay(Duration::from_micros(500))));
        assert_eq!(parse_command("loss 0"), Ok(Command::Loss(0.0)));
        assert_eq!(parse_command("loss 0.25"), Ok(Command::Loss(0.25)));
        assert_eq!(parse_command("loss 1"), Ok(Command::Loss(1.0)));
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            "",
            "   ",
            "reboot",
            "rebind now",
            "stats please",
            "blackhole",
            "blackhole yes",
            "block-udp maybe",
            "blackhole on off",
            "delay",
            "delay -1",
            "delay abc",
            "delay NaN",
            "delay inf",
            "loss",
            "loss 1.5",
            "loss -0.1",
            "loss NaN",
        ] {
            let err = parse_command(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad:?} gave an empty reason");
        }
    }
}
