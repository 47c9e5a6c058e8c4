"""The operations of Signalbox. Views, tasks and commands call these; they hold the logic."""
