"""Sample images shipped with napari-unet (installed as ``napari_unet.sample_data``)."""
