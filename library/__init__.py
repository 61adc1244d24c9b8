"""Photo-library scale: index a folder of images into an fp16 store and search it by text or image.

index_folder(bundle, target, images_dir, library_dir) -> IndexReport     (streaming, resumable, incremental)
search_library(library_dir, bundle, target, texts=[...], images=[...], top_k=10) -> dict
Library(library_dir)                                                    (the store; docs/library-format.md)
"""
