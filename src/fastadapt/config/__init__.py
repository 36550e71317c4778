"""What a run is, before anything is built: its settings (``schema``), the task families (``families``), the
shipped presets (``presets``) and where a run's weights come from (``provenance``). Methods are declared in
``algorithms`` (``algorithms.registry``); ``training`` and ``runs`` build on this package."""
