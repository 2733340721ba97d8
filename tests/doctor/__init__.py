"""The doctor's tests. A package so that ``conftest.py`` here is ``doctor.conftest`` and leaves
``tests/conftest.py`` the module that ``from conftest import ...`` finds."""
