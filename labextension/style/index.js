import './base.css';
import './team.css';
