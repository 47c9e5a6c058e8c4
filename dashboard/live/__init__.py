"""The dashboard's live sockets: one hub per process, frames written to many sockets."""
