import './base.css';
import './taskdetail.css';
