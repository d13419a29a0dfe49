"""
The repository's command-line tools (``fire``), one module each: run them from the repository root as
``python -m tools.<name> --help`` (``sample_data``, ``btcv_datalist``, ``brats_datalist``, ``check_data``,
``convert_checkpoint``, ``export_bundle``, ``install_bundle``, ``monailabel_serve``, ``learning_check_btcv``,
``learning_check_brats``, ``benchmark``, ``make_legacy_fixture``). They work on this checkout (its ``bundles/``):
the package is installed editable (``make install``), never as a copy.
"""
