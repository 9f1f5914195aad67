# The benchmark service for capnp-rpc.
@0xd2b7c9e4a1f30658;

interface Bench {
  echo @0 (s :Text) -> (s :Text);
  stage @1 () -> (stage :Stage);
  items @2 (n :UInt64, size :UInt64, sink :Sink) -> ();
}

interface Stage {
  next @0 () -> (stage :Stage);
  value @1 () -> (s :Text);
}

interface Sink {
  item @0 (s :Text) -> ();
}
