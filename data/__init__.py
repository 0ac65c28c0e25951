"""Data for FNOReg: neurite-OASIS loaders, the published splits and pair protocols, resolution
handling, a synthetic brain phantom and a downloader. See ``docs/data.md``.

Entry points: :func:`data.config.validate_data_config`, :func:`data.dataset.load_splits`,
:func:`data.resize.shape_for_size`, :func:`data.resize.resize_images`,
:func:`data.resize.resize_labels`.
"""
