"""The Streamlit chat app; talks to `medp serve` over HTTP only (DESIGN.md §6). Not built yet."""
