"""The console scripts (thaw-train, thaw-report, thaw-predict, thaw-evaluate, thaw-export,
thaw-retrain) and the hooks thaw-train gives the sweeper."""
