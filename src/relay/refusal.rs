//! Why the relay ends a browser's WebSocket: the close codes it sends (PROTOCOL.md, "Relay close
//! codes"), and which of them a client must not retry.
//!
//! Browsers never see the body of a refused upgrade (only `1006`), so the relay accepts the
//! upgrade and closes at once with one of these codes and a reason a person can act on. The
//! hundreds follow HTTP: `44xx` the request is wrong and retrying it cannot help (except `4408`,
//! a timeout), `45xx` the relay or its target cannot serve it now.

/// A reason the relay closes a browser's WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayClose {
    /// No token was presented, or a wrong one.
    Token,
    /// The page's origin may not use this relay.
    Origin,
    /// The path names no target of this relay.
    UnknownTarget,
    /// Nothing came from the browser for the idle timeout.
    Idle,
    /// The target refused the connection or could not be reached.
    TargetUnreachable,
    /// The relay has as many connections as it may.
    Full,
    /// The target did not answer within the handshake timeout.
    TargetTimeout,
    /// A page offers a name another page offers already (the listen route). Not permanent: the
    /// other offer may be the same tab's before a reload, its socket gone without a close,
    /// which the relay holds until its idle timeout.
    Offered,
}

impl RelayClose {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            RelayClose::Token => 4401,
            RelayClose::Origin => 4403,
            RelayClose::UnknownTarget => 4404,
            RelayClose::Idle => 4408,
            RelayClose::TargetUnreachable => 4502,
            RelayClose::Full => 4503,
            RelayClose::TargetTimeout => 4504,
            RelayClose::Offered => 4409,
        }
    }

    /// Whether the same request can never succeed: a client stops retrying and shows the reason.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            RelayClose::Token | RelayClose::Origin | RelayClose::UnknownTarget
        )
    }

    /// Every code, for documentation and tests.
    pub const ALL: [RelayClose; 8] = [
        RelayClose::Token,
        RelayClose::Origin,
        RelayClose::UnknownTarget,
        RelayClose::Idle,
        RelayClose::TargetUnreachable,
        RelayClose::Full,
        RelayClose::TargetTimeout,
        RelayClose::Offered,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_codes_are_the_44xx_ones_but_the_timeout_and_the_name_offered() {
        for close in RelayClose::ALL {
            let code = close.code();
            assert!((4400..4600).contains(&code), "{close:?}");
            assert_eq!(
                close.is_permanent(),
                code / 100 == 44 && code != 4408 && code != 4409,
                "{close:?}"
            );
        }
    }
}
