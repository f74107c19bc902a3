//! Temporary minimal command table (replaced by the full table).
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Plain,
    Select,
    Hello,
    Auth,
    Quit,
    Reset,
    Ping,
    Echo,
    ClientId,
    ClientSetName,
    ClientGetName,
    ClientSetInfo,
    ClientReply,
    ClientTracking,
    ClientCaching,
    ClientKill,
    ClientList,
    ClientInfo,
    ClientUnblock,
    ClientNoEvict,
    ClientNoTouch,
    ClientPause,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
    Publish,
    SPublish,
    Monitor,
    Replication,
    FlushDb,
    FlushAll,
    SwapDb,
    Move,
    Copy,
    Eval,
    EvalSha,
    EvalRo,
    EvalShaRo,
    FCall,
    FCallRo,
    Script,
    Function,
    Keys,
    Scan,
    Command,
}
#[derive(Debug)]
pub struct CommandInfo {
    pub name: String,
    pub arity: i32,
    pub kind: CommandKind,
}
impl CommandInfo {
    pub fn is_blocking(&self, args: &[Bytes]) -> bool {
        match self.name.as_str() {
            "blpop" | "brpop" | "blmove" | "brpoplpush" | "blmpop" | "bzpopmin" | "bzpopmax"
            | "bzmpop" | "wait" | "waitaof" => true,
            "xread" | "xreadgroup" => args.iter().any(|a| a.eq_ignore_ascii_case(b"block")),
            _ => false,
        }
    }
}
#[derive(Debug, Default)]
pub struct CommandTable {
    map: HashMap<String, Arc<CommandInfo>>,
}
#[derive(Debug, thiserror::Error)]
#[error("bad table")]
pub struct TableError;
impl CommandTable {
    pub fn builtin() -> CommandTable {
        use CommandKind::*;
        let mut map = HashMap::new();
        for (n, k) in [
            ("select", Select),
            ("hello", Hello),
            ("auth", Auth),
            ("quit", Quit),
            ("reset", Reset),
            ("client|id", ClientId),
            ("client|setname", ClientSetName),
            ("client|getname", ClientGetName),
            ("client|setinfo", ClientSetInfo),
            ("client|reply", ClientReply),
            ("client|tracking", ClientTracking),
            ("multi", Multi),
            ("exec", Exec),
            ("discard", Discard),
            ("watch", Watch),
            ("unwatch", Unwatch),
            ("subscribe", Subscribe),
            ("psubscribe", PSubscribe),
            ("ssubscribe", SSubscribe),
            ("unsubscribe", Unsubscribe),
            ("punsubscribe", PUnsubscribe),
            ("sunsubscribe", SUnsubscribe),
            ("monitor", Monitor),
            ("sync", Replication),
            ("psync", Replication),
            ("blpop", Plain),
            ("brpop", Plain),
            ("blmove", Plain),
            ("xread", Plain),
            ("bzpopmin", Plain),
            ("wait", Plain),
            ("get", Plain),
            ("client", Plain),
        ] {
            map.insert(
                n.to_string(),
                Arc::new(CommandInfo {
                    name: n.to_string(),
                    arity: -1,
                    kind: k,
                }),
            );
        }
        CommandTable { map }
    }
    pub fn from_command_reply(_reply: &[u8]) -> Result<CommandTable, TableError> {
        Ok(Self::builtin())
    }
    pub fn merged_with_builtin(self) -> CommandTable {
        self
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn lookup(&self, args: &[Bytes]) -> Option<&Arc<CommandInfo>> {
        let name = String::from_utf8_lossy(args.first()?).to_ascii_lowercase();
        if let Some(sub) = args.get(1) {
            let full = format!(
                "{name}|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            );
            if let Some(i) = self.map.get(&full) {
                return Some(i);
            }
        }
        self.map.get(&name)
    }
}
