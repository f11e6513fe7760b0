"""The Streamlit chat app (DESIGN.md §6); it reaches the model only over HTTP, through ``medp serve``.

    ui/app.py          the page: image in, regions drawn, chat, export (``streamlit run ui/app.py``)
    ui.canvas          canvas drawings <-> region JSON in original image pixels
    ui.conversation    a conversation's requests and its export
    ui.segmentation    click to segment: the tool's marks -> /v1/segment -> mask regions
    ui.client          the server over HTTP, with readable errors
    ui.sources         uploads and bundled samples
    ui.launch          ``medp ui``: server and app together
"""
