from setuptools import setup

setup(
    name="tinyparse",
    version="0.3.1",
    packages=["tinyparse"],
)
